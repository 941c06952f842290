"""What the analyses' ``--json`` outputs share."""

from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """The same structure with every non-finite float as None (JSON has no NaN/inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj

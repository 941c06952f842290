"""Where the tests find the real instrument files: ``shared/data`` beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

PTU_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "ptu"
PTU_FILES = [
    "hazelnut_z1.ptu",
    "hydraharp_v10_t3.ptu",
    "hydraharp_v20_t3.ptu",
    "hydraharp_v20_t2.ptu",
    "picoharp_v30_t2.ptu",
]

needs_ptu_files = pytest.mark.skipif(
    not PTU_DIR.is_dir(), reason=f"sample .ptu files not found at {PTU_DIR}"
)

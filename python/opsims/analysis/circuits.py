"""Equivalent circuits: a parser for circuit strings and a vectorised evaluator of Z(ω)
with its analytic Jacobian.

Grammar (the notation of the common open-source fitters)::

    circuit  := term ("-" term)*             series
    term     := element | "p(" circuit ("," circuit)+ ")"   parallel
    element  := KIND LABEL                   e.g. R0, CPE1, Wo2, C_gb

Element kinds and their parameters (SI units; ω = 2πf):

========  ===================================  ===============================
kind      impedance                            parameters
========  ===================================  ===============================
R         R                                    ``R1`` (Ω)
C         1 / (jωC)                            ``C1`` (F)
L         jωL                                  ``L1`` (H)
CPE       1 / (Q (jω)^n)                       ``CPE1_Q`` (F s^(n-1)), ``CPE1_n``
W         A_W (1 - j) / √ω  (semi-infinite)    ``W1`` (Ω s^-1/2)
Wo        R coth(√(jωτ)) / √(jωτ)  (open)      ``Wo1_R`` (Ω), ``Wo1_tau`` (s)
Ws        R tanh(√(jωτ)) / √(jωτ)  (short)     ``Ws1_R`` (Ω), ``Ws1_tau`` (s)
========  ===================================  ===============================

The fitter works in *internal* coordinates: the natural logarithm of every positive
magnitude (R, C, L, Q, A_W, τ) and the CPE exponent n itself, so one step size suits
parameters that span ten decades. :meth:`Circuit.evaluate` returns Z and ∂Z/∂x in
those coordinates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

#: Element kinds, longest first so that "CPE" wins over "C" and "Wo" over "W".
KINDS = ("CPE", "Wo", "Ws", "R", "C", "L", "W")
ParamRole = Literal[
    "resistance", "capacitance", "inductance", "cpe_q", "exponent", "warburg", "time"
]
_PARAMS: dict[str, tuple[tuple[str, ParamRole, str], ...]] = {
    "R": (("", "resistance", "Ohm"),),
    "C": (("", "capacitance", "F"),),
    "L": (("", "inductance", "H"),),
    "CPE": (("_Q", "cpe_q", "F s^(n-1)"), ("_n", "exponent", "1")),
    "W": (("", "warburg", "Ohm s^-1/2"),),
    "Wo": (("_R", "resistance", "Ohm"), ("_tau", "time", "s")),
    "Ws": (("_R", "resistance", "Ohm"), ("_tau", "time", "s")),
}
_NPARAMS = {k: len(v) for k, v in _PARAMS.items()}
_LABEL = re.compile(r"[A-Za-z0-9_]*")


class CircuitError(ValueError):
    """A circuit string that does not parse, or parameter values that do not fit it."""


@dataclass(frozen=True)
class Param:
    """One circuit parameter: its name (``R1``, ``CPE1_Q``), role, unit and element."""

    name: str
    role: ParamRole
    unit: str
    element: str

    @property
    def log_scaled(self) -> bool:
        """True for positive magnitudes fitted as ln(value); False for CPE exponents."""
        return self.role != "exponent"


@dataclass(frozen=True)
class Element:
    kind: str
    name: str
    first: int  # index of the element's first parameter in Circuit.params


@dataclass(frozen=True)
class Series:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Parallel:
    parts: tuple[Node, ...]
    spans: tuple[tuple[int, int], ...] = ()  # parameter index range of each branch


Node = Element | Series | Parallel


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.s = text.replace(" ", "")
        self.i = 0
        self.params: list[Param] = []
        self.names: set[str] = set()

    def fail(self, what: str) -> CircuitError:
        shown = self.s[self.i] if self.i < len(self.s) else "end of string"
        return CircuitError(
            f"circuit {self.text!r}: {what} at position {self.i} (found {shown!r})\n"
            f"  {self.s}\n  {' ' * self.i}^"
        )

    def parse(self) -> Node:
        if not self.s:
            raise CircuitError("circuit string is empty")
        node = self.series()
        if self.i != len(self.s):
            raise self.fail("expected '-', ',' or end")
        return node

    def series(self) -> Node:
        parts = [self.term()]
        while self.i < len(self.s) and self.s[self.i] == "-":
            self.i += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Series(tuple(parts))

    def term(self) -> Node:
        if self.s.startswith("p(", self.i):
            self.i += 2
            parts = [self.series()]
            while self.i < len(self.s) and self.s[self.i] == ",":
                self.i += 1
                parts.append(self.series())
            if self.i >= len(self.s) or self.s[self.i] != ")":
                raise self.fail("expected ',' or ')' to close p(")
            if len(parts) < 2:
                raise self.fail("p(...) needs at least two branches")
            self.i += 1
            return Parallel(tuple(parts), tuple(_span(p) for p in parts))
        return self.element()

    def element(self) -> Element:
        start = self.i
        kind = next((k for k in KINDS if self.s.startswith(k, self.i)), None)
        if kind is None:
            raise self.fail(f"expected an element ({', '.join(sorted(KINDS))}) or p(")
        self.i += len(kind)
        m = _LABEL.match(self.s, self.i)
        label = m.group(0) if m else ""
        self.i += len(label)
        name = kind + label
        if not label:
            self.i = start
            raise self.fail(f"element {kind} needs a label, e.g. {kind}1")
        if name in self.names:
            self.i = start
            raise self.fail(f"element name {name!r} used twice")
        self.names.add(name)
        first = len(self.params)
        for suffix, role, unit in _PARAMS[kind]:
            self.params.append(Param(name + suffix, role, unit, name))
        return Element(kind, name, first)


def _element_z(kind: str, x: F64, w: F64, jac: bool) -> tuple[C128, list[C128]]:
    """Z of one element and ∂Z/∂x for each of its internal parameters."""
    if kind == "R":
        z = np.empty(w.shape, dtype=np.complex128)
        z.fill(math.exp(x[0]))
        return z, [z] if jac else []
    if kind == "C":
        z = 1.0 / (1j * w * np.exp(x[0]))
        return z, [-z] if jac else []
    if kind == "L":
        z = 1j * w * np.exp(x[0])
        return z, [z] if jac else []
    if kind == "CPE":
        n = x[1]
        log_jw = np.log(w) + 0.5j * np.pi
        z = np.exp(-x[0] - n * log_jw)
        return z, [-z, -z * log_jw] if jac else []
    if kind == "W":
        z = np.exp(x[0]) * (1.0 - 1j) / np.sqrt(w)
        return z, [z] if jac else []
    # Finite Warburg: s = √(jωτ) has argument π/4, so e = exp(-2s) never overflows.
    r, tau = np.exp(x[0]), np.exp(x[1])
    s = np.sqrt(1j * w * tau)
    e = np.exp(-2.0 * s)
    one_minus = -np.expm1(-2.0 * s)
    if kind == "Wo":
        f = (1.0 + e) / one_minus  # coth s
        z = r * f / s
        if not jac:
            return z, []
        csch2 = 4.0 * e / one_minus**2
        return z, [z, r * (-0.5 * csch2 - 0.5 * f / s)]
    f = one_minus / (1.0 + e)  # tanh s
    z = r * f / s
    if not jac:
        return z, []
    sech2 = 4.0 * e / (1.0 + e) ** 2
    return z, [z, r * (0.5 * sech2 - 0.5 * f / s)]


class Circuit:
    """A parsed equivalent circuit.

    >>> c = Circuit("R0-p(R1,CPE1)")
    >>> [p.name for p in c.params]
    ['R0', 'R1', 'CPE1_Q', 'CPE1_n']
    """

    def __init__(self, text: str) -> None:
        parser = _Parser(text)
        self.root: Node = parser.parse()
        self.text = parser.s
        self.params: tuple[Param, ...] = tuple(parser.params)
        self.names: tuple[str, ...] = tuple(p.name for p in self.params)
        self._chain = _Chain.plan(self)

    def __repr__(self) -> str:
        return f"Circuit({self.text!r})"

    def __str__(self) -> str:
        return self.text

    # -- coordinates ---------------------------------------------------------------
    def to_internal(self, values: Mapping[str, float] | Sequence[float]) -> F64:
        """Internal coordinates (ln of magnitudes, n as is) from values by name or order."""
        if isinstance(values, Mapping):
            missing = [n for n in self.names if n not in values]
            extra = [n for n in values if n not in self.names]
            if missing or extra:
                raise CircuitError(
                    f"circuit {self.text}: missing parameters {missing}, unknown {extra}"
                )
            seq = [float(values[n]) for n in self.names]
        else:
            seq = [float(v) for v in values]
            if len(seq) != len(self.params):
                raise CircuitError(
                    f"circuit {self.text} has {len(self.params)} parameters "
                    f"({', '.join(self.names)}), got {len(seq)} values"
                )
        out = np.empty(len(seq))
        for k, (p, v) in enumerate(zip(self.params, seq, strict=True)):
            if not np.isfinite(v) or (p.log_scaled and v <= 0):
                raise CircuitError(f"{p.name} must be a finite positive number, got {v}")
            out[k] = np.log(v) if p.log_scaled else v
        return out

    def from_internal(self, x: F64) -> dict[str, float]:
        return {
            p.name: float(np.exp(v) if p.log_scaled else v)
            for p, v in zip(self.params, x, strict=True)
        }

    # -- evaluation ----------------------------------------------------------------
    def impedance(
        self, freq_hz: npt.ArrayLike, values: Mapping[str, float] | Sequence[float]
    ) -> C128:
        """Z(f) in Ω for parameter values (by name, or in ``params`` order)."""
        w = 2.0 * np.pi * np.asarray(freq_hz, dtype=np.float64)
        z, _ = self.evaluate(w, self.to_internal(values), jacobian=False)
        return z

    def evaluate(self, omega: F64, x: F64, jacobian: bool = True) -> tuple[C128, C128]:
        """Z(ω) and ∂Z/∂x (shape params x ω; empty when ``jacobian`` is False)."""
        jac = np.zeros((len(self.params) if jacobian else 0, omega.size), dtype=np.complex128)
        if self._chain is not None:
            return self._chain.evaluate(omega, x, jac, jacobian), jac
        z = self._eval(self.root, omega, x, jac, jacobian)
        return z, jac

    def _eval(self, node: Node, w: F64, x: F64, jac: C128, want: bool) -> C128:
        if isinstance(node, Element):
            k = _NPARAMS[node.kind]
            z, dz = _element_z(node.kind, x[node.first : node.first + k], w, want)
            for i, d in enumerate(dz):
                jac[node.first + i] = d
            return z
        if isinstance(node, Series):
            z = self._eval(node.parts[0], w, x, jac, want)
            for part in node.parts[1:]:
                z = z + self._eval(part, w, x, jac, want)
            return z
        zs = [self._eval(p, w, x, jac, want) for p in node.parts]
        y = 1.0 / zs[0]
        for zi in zs[1:]:
            y = y + 1.0 / zi
        z = 1.0 / y
        if want:
            # Z = 1/ΣY_i, so ∂Z/∂x = Z² Σ ∂Z_i/∂x / Z_i² over the branch holding x.
            for (lo, hi), zi in zip(node.spans, zs, strict=True):
                jac[lo:hi] *= (z / zi) ** 2
        return z

    # -- structure -----------------------------------------------------------------
    def elements(self) -> tuple[Element, ...]:
        out: list[Element] = []

        def walk(node: Node) -> None:
            if isinstance(node, Element):
                out.append(node)
            else:
                for p in node.parts:
                    walk(p)

        walk(self.root)
        return tuple(out)

    def series_parts(self) -> tuple[Node, ...]:
        """The top-level series chain (one item when the root is not a series)."""
        return self.root.parts if isinstance(self.root, Series) else (self.root,)

    def kind_of(self, element_name: str) -> str:
        return next(e.kind for e in self.elements() if e.name == element_name)


class _Chain:
    """The common shape, a series of single elements and R‖CPE / R‖C blocks, evaluated
    with all blocks at once: Z_k = R/(1 + t), t = R Q (jω)^n, so ∂Z_k/∂lnR = Z_k/(1 + t),
    ∂Z_k/∂lnQ = -Z_k t/(1 + t) and ∂Z_k/∂n = ln(jω)·∂Z_k/∂lnQ. Same results as the
    tree walk, a third of the time: the fitter's inner loop."""

    def __init__(
        self, singles: list[Element], r: list[int], q: list[int], n: list[int], cpe: list[bool]
    ) -> None:
        self.singles = singles
        self.r = np.array(r, dtype=np.intp)
        self.q = np.array(q, dtype=np.intp)
        self.cpe = np.array(cpe, dtype=bool)
        self.n = np.array(n, dtype=np.intp)  # exponent indices of the CPE blocks only

    @classmethod
    def plan(cls, circuit: Circuit) -> _Chain | None:
        singles: list[Element] = []
        r: list[int] = []
        q: list[int] = []
        n: list[int] = []
        cpe: list[bool] = []
        for part in circuit.series_parts():
            if isinstance(part, Element):
                singles.append(part)
                continue
            if not (isinstance(part, Parallel) and len(part.parts) == 2):
                return None
            a, b = part.parts
            if isinstance(b, Element) and b.kind == "R":
                a, b = b, a
            if not (
                isinstance(a, Element)
                and isinstance(b, Element)
                and a.kind == "R"
                and b.kind in ("CPE", "C")
            ):
                return None
            r.append(a.first)
            q.append(b.first)
            cpe.append(b.kind == "CPE")
            if b.kind == "CPE":
                n.append(b.first + 1)
        return cls(singles, r, q, n, cpe)

    def evaluate(self, w: F64, x: F64, jac: C128, want: bool) -> C128:
        z = np.zeros(w.shape, dtype=np.complex128)
        for e in self.singles:
            k = _NPARAMS[e.kind]
            ze, dz = _element_z(e.kind, x[e.first : e.first + k], w, want)
            z += ze
            for i, d in enumerate(dz):
                jac[e.first + i] = d
        if self.r.size == 0:
            return z
        log_jw = np.log(w) + 0.5j * np.pi
        expo = np.ones(self.r.size)
        expo[self.cpe] = x[self.n]
        r = np.exp(x[self.r])
        t = np.exp((x[self.r] + x[self.q])[:, None] + expo[:, None] * log_jw[None, :])
        den = 1.0 + t
        zk = r[:, None] / den
        z += zk.sum(axis=0)
        if want:
            jac[self.r] = zk / den
            dq = -zk * t / den
            jac[self.q] = dq
            jac[self.n] = dq[self.cpe] * log_jw
        return z


def _span(node: Node) -> tuple[int, int]:
    """The contiguous range of parameter indices a subtree owns."""
    if isinstance(node, Element):
        return node.first, node.first + _NPARAMS[node.kind]
    spans = [_span(p) for p in node.parts]
    return spans[0][0], spans[-1][1]


@dataclass(frozen=True)
class ArcBlock:
    """A top-level parallel R‖CPE or R‖C block: one relaxation arc in the Nyquist plot."""

    resistor: str  # parameter name, e.g. "R1"
    capacitor: str  # element name, e.g. "CPE1" or "C1"
    kind: Literal["CPE", "C"]
    r_index: int
    q_index: int
    n_index: int | None  # None for an ideal capacitor (n = 1)


def arc_blocks(circuit: Circuit) -> tuple[ArcBlock, ...]:
    """The circuit's top-level R‖CPE and R‖C blocks, in the circuit string's order."""
    out = []
    for part in circuit.series_parts():
        if not (isinstance(part, Parallel) and len(part.parts) == 2):
            continue
        a, b = part.parts
        if not (isinstance(a, Element) and isinstance(b, Element)):
            continue
        if b.kind == "R":
            a, b = b, a
        if a.kind != "R" or b.kind not in ("CPE", "C"):
            continue
        kind: Literal["CPE", "C"] = "CPE" if b.kind == "CPE" else "C"
        n_index = b.first + 1 if kind == "CPE" else None
        out.append(ArcBlock(a.name, b.name, kind, a.first, b.first, n_index))
    return tuple(out)


def series_elements(circuit: Circuit, kind: str) -> tuple[Element, ...]:
    """Top-level series elements of one kind (e.g. the series resistance R0)."""
    return tuple(p for p in circuit.series_parts() if isinstance(p, Element) and p.kind == kind)

"""Label-value mappings such as ``1,2->1`` or ``>0->1`` and the checks that make mask values integers.

Grammar (whitespace is ignored)::

    MAPPING := RULE ((";" | ",") RULE)*
    RULE    := SOURCE "->" VALUE
    SOURCE  := TERM ("," TERM)*
    TERM    := INT | (">" | ">=" | "<" | "<=") INT | "*"

A destination is always a single value, so ``1,2->1,3->2`` reads unambiguously as ``{1,2}->1`` and
``{3}->2``. Rules are tried in the order written and the first match wins; ``*`` matches any value.
A value no rule matches is kept only if it is 0 (background stays background) and is reported
otherwise, so that a mask holding an unexpected value is an error rather than a silent relabel.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

# tolerance within which a float mask value counts as an integer: HarP ships masks whose 1s are
# stored as e.g. 0.99999994, while a genuinely soft mask has values like 0.5
INTEGER_TOLERANCE = 1e-3

# label values below this are mapped through a lookup table with one entry per value
_TABLE_LIMIT = 1 << 16

_INT = r"-?\d+"
_TERM = re.compile(rf"^(?:(?P<op>>=|<=|>|<)?(?P<value>{_INT})|(?P<any>\*))$")
_EXAMPLE = "e.g. '1,2->1', '>0->1' or '165->1;166->2;*->0'"

_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "": lambda v, ref: v == ref,
    ">": lambda v, ref: v > ref,
    ">=": lambda v, ref: v >= ref,
    "<": lambda v, ref: v < ref,
    "<=": lambda v, ref: v <= ref,
}


@dataclass(frozen=True)
class Term:
    op: str  # "" (equals), ">", ">=", "<", "<=" or "*"
    value: int = 0

    def matches(self, v: int) -> bool:
        return True if self.op == "*" else _COMPARISONS[self.op](v, self.value)

    def __str__(self) -> str:
        return "*" if self.op == "*" else f"{self.op}{self.value}"


@dataclass(frozen=True)
class Rule:
    sources: tuple[Term, ...]
    target: int

    def matches(self, v: int) -> bool:
        return any(t.matches(v) for t in self.sources)

    def __str__(self) -> str:
        return ",".join(map(str, self.sources)) + f"->{self.target}"


@dataclass(frozen=True)
class LabelMapping:
    """An ordered list of rules; ``LabelMapping(())`` is the identity."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelMapping:
        spec = re.sub(r"\s+", "", text)
        segments = spec.split("->")
        if len(segments) < 2 or not spec:
            raise ValueError(f"label mapping {text!r} has no rule; write SOURCE->VALUE, {_EXAMPLE}")
        sources = [segments[0]]
        targets: list[str] = []
        # every segment between two arrows is "TARGET<sep>NEXT_SOURCE", because a target is one value
        for segment in segments[1:-1]:
            m = re.fullmatch(r"([^,;]*)[,;](.*)", segment)
            if not m:
                raise ValueError(f"label mapping {text!r}: {segment!r} joins two arrows without a separator; "
                                 f"separate rules with ';' or ',', {_EXAMPLE}")
            targets.append(m[1])
            sources.append(m[2])
        targets.append(segments[-1])
        rules = tuple(Rule(cls._parse_source(src, text), cls._parse_target(tgt, text))
                      for src, tgt in zip(sources, targets))
        return cls(rules)

    @staticmethod
    def _parse_source(source: str, text: str) -> tuple[Term, ...]:
        terms = []
        for raw in source.split(","):
            m = _TERM.match(raw)
            if not m:
                raise ValueError(f"label mapping {text!r}: {raw!r} is not a label value; a source is an integer, "
                                 f"a comparison such as '>0' or '*', {_EXAMPLE}")
            terms.append(Term("*") if m["any"] else Term(m["op"] or "", int(m["value"])))
        return tuple(terms)

    @staticmethod
    def _parse_target(target: str, text: str) -> int:
        if not re.fullmatch(r"\d+", target):
            raise ValueError(f"label mapping {text!r}: target {target!r} must be one non-negative integer, {_EXAMPLE}")
        return int(target)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[Iterable[int], int]], others_to_background: bool = False) -> LabelMapping:
        """Build from ``[(source values, target), ...]``; formats use this for their fixed label schemes."""
        rules = [Rule(tuple(Term("", int(v)) for v in src), int(tgt)) for src, tgt in pairs]
        if others_to_background:
            rules.append(Rule((Term("*"),), 0))
        return cls(tuple(rules))

    @property
    def is_identity(self) -> bool:
        return not self.rules

    @property
    def targets(self) -> list[int]:
        return sorted({r.target for r in self.rules})

    def lookup(self, value: int) -> int | None:
        for rule in self.rules:
            if rule.matches(value):
                return rule.target
        if self.is_identity:
            return value if value >= 0 else None
        return 0 if value == 0 else None

    def apply(self, labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Map integer ``labels``; return the mapped array and the values no rule matched (left as 0)."""
        small = labels.size > 0 and labels.min() >= 0 and labels.max() < _TABLE_LIMIT
        if small:
            # a lookup table indexed by value is linear in the voxels; np.unique sorts them, which takes
            # seconds on a whole-head atlas label (LPBA40: 5 million voxels)
            values = np.flatnonzero(np.bincount(labels.ravel()))
        else:
            values, inverse = np.unique(labels, return_inverse=True)
        mapped = [self.lookup(int(v)) for v in values]
        unmatched = [int(v) for v, m in zip(values, mapped) if m is None]
        table = np.array([0 if m is None else m for m in mapped], dtype=np.int64)
        if small:
            by_value = np.zeros(int(values[-1]) + 1, dtype=np.int64)
            by_value[values] = table
            return by_value[labels], unmatched
        return table[inverse].reshape(labels.shape), unmatched

    def __str__(self) -> str:
        return ";".join(map(str, self.rules)) if self.rules else "identity"


def integer_labels(values: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Return ``values`` as int64, rounding floats within INTEGER_TOLERANCE; else (None, reason)."""
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return values.astype(np.int64), None
    if not np.all(np.isfinite(values)):
        return None, "contains NaN or infinite values"
    rounded = np.rint(values)
    deviation = np.abs(values - rounded)
    worst = float(deviation.max()) if deviation.size else 0.0
    if worst > INTEGER_TOLERANCE:
        bad = values.flat[int(np.argmax(deviation))]
        n_bad = int((deviation > INTEGER_TOLERANCE).sum())
        return None, (f"holds non-integer label values ({n_bad} voxels, e.g. {bad:g}); a mask must hold class "
                      f"numbers, so threshold or re-export it (soft/probability masks are not labels)")
    return rounded.astype(np.int64), None


def format_values(values: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")

"""The verdict's output, typed: ``Summary`` (report.json's ``summary``) and the records in it --
``FirstDivergence``, ``LargestError``, ``LargestExcess``, ``Diagnosis``. Defined here, below
both the verdict (which writes them) and the report (which reads and renders them), and
importable without torch; ``parity.report.schema`` checks a report.json against the same
field names (a test keeps the two in step).

Each record is a dataclass read by attribute (``summary.first_divergence.probe``). It also
reads and writes like the mapping it is stored as (``summary["verdict"]``, ``.get``, ``in``),
so that a record's JSON is exactly what its writer set: a field is written when it was given a
value, or assigned after construction (``diagnosis.named_cause = None`` is written as null), or
is one the record always carries when built in code (``ALWAYS``); one read from JSON carries
the keys it was read with. Keys a record has no field for -- what a
command adds of its own (``quant``, ``bisect``, ``error``...) -- are kept, in order, in
``extra``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

Verdict = Literal["pass", "diverged", "fail", "error"]


class Record(Mapping[str, Any]):
    """Mapping access and exact JSON for the dataclasses below (see the module docstring): a
    record is a ``Mapping`` (equal to the dict of what it holds), and writable like a dict."""

    ALWAYS: ClassVar[frozenset[str]] = frozenset()
    #: nested records by field name, for from_dict
    NESTED: ClassVar[dict[str, type[Record]]] = {}
    extra: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_assigned", [n for n in self.names() if n in self.ALWAYS])

    def __setattr__(self, name: str, value: Any) -> None:
        assigned = self.__dict__.get("_assigned")
        if assigned is not None and name not in assigned:
            assigned.append(name)
        object.__setattr__(self, name, value)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]  # type: ignore[arg-type]

    def _present(self, key: str) -> bool:
        return getattr(self, key) is not None or key in self.__dict__.get("_assigned", ())

    # -- the mapping view ----------------------------------------------------------------
    def _keys(self) -> list[str]:
        return [k for k in self.names() if self._present(k)] + list(self.extra)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self.extra or (key in self.names() and self._present(key)))

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key in self.names() and self._present(key):
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.names():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        if key in self.extra:
            return self.extra.pop(key)
        if key in self.names() and self._present(key):
            value = getattr(self, key)
            object.__setattr__(self, key, None)
            assigned = self.__dict__.get("_assigned", [])
            if key in assigned:
                assigned.remove(key)
            return value
        if default:
            return default[0]
        raise KeyError(key)

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(self[k]) for k in self._keys()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Any:
        known = set(cls.names())
        values = {k: _typed(cls.NESTED.get(k), v) for k, v in raw.items() if k in known}
        record = cls(**values, extra={k: v for k, v in raw.items() if k not in known})  # type: ignore[call-arg]
        record.__dict__["_assigned"] = [k for k in raw if k in known]  # what was written (None too) is written back
        return record


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _typed(kind: type[Record] | None, value: Any) -> Any:
    return kind.from_dict(value) if kind is not None and isinstance(value, Mapping) else value


@dataclass(eq=False)
class FirstDivergence(Record):
    """The first probe over its budget (or tolerance), in execution order."""

    ALWAYS: ClassVar[frozenset[str]] = frozenset({
        "probe", "block", "component", "classification", "growth", "last_matched", "max_abs_err", "nrmse",
        "atol", "rtol", "excess", "twin_nrmse", "twin_max_abs_err"})

    probe: str | None = None
    block: int | None = None
    component: str | None = None
    classification: str | None = None  # "step" | "accumulation"
    growth: float | None = None  # its measure over the largest upstream
    last_matched: str | None = None
    max_abs_err: float | None = None
    nrmse: float | None = None
    atol: float | None = None
    rtol: float | None = None
    excess: float | None = None
    twin_nrmse: float | None = None
    twin_max_abs_err: float | None = None
    #: the earlier probe where the error was born (its input matched, its error a step over it)
    born_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class LargestError(Record):
    ALWAYS: ClassVar[frozenset[str]] = frozenset({"probe", "nrmse", "max_abs_err"})

    probe: str | None = None
    nrmse: float | None = None
    max_abs_err: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class LargestExcess(Record):
    ALWAYS: ClassVar[frozenset[str]] = frozenset({"probe", "excess"})

    probe: str | None = None
    excess: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Diagnosis(Record):
    """Where the divergence is and what caused it: the located component, the evidence, and
    (after the targeted pass) the hypotheses tested and the one named."""

    block: int | None = None
    component: str | None = None
    cause: str | None = None
    kind: str | None = None  # "bug" | "accumulation"
    hint: str | None = None
    evidence: list[str] | None = None
    probe: str | None = None
    hypotheses: list[dict[str, Any]] | None = None
    targeted: dict[str, Any] | None = None
    tokens: list[dict[str, Any]] | None = None
    location_hint: str | None = None
    named_cause: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Summary(Record):
    """A run's verdict: pass/diverged, where, how, and why."""

    ALWAYS: ClassVar[frozenset[str]] = frozenset({
        "verdict", "probes_compared", "probes_failed", "probes_not_exposed", "first_divergence", "largest_error",
        "tolerance", "message"})
    NESTED: ClassVar[dict[str, type[Record]]] = {
        "first_divergence": FirstDivergence, "largest_error": LargestError, "largest_excess": LargestExcess,
        "diagnosis": Diagnosis}

    verdict: Verdict | None = None
    probes_compared: int | None = None
    probes_failed: int | None = None
    probes_not_exposed: int | None = None
    first_divergence: FirstDivergence | None = None
    largest_error: LargestError | None = None
    tolerance: str | None = None  # "calibrated" | "absolute"
    budget: float | None = None
    floor: float | None = None
    largest_excess: LargestExcess | None = None
    classification: str | None = None  # a passing run: "exact" | "accumulation"
    message: str = ""
    diagnosis: Diagnosis | None = None
    isolation: str | None = None  # the teacher-forced pass: "measured", "off", "not supported ..."
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def as_summary(value: Summary | Mapping[str, Any]) -> Summary:
    """``value`` as a Summary (a mapping, e.g. a report.json's, is read into one)."""
    return value if isinstance(value, Summary) else Summary.from_dict(value)

"""One accounting model: what a step did with its records, and the invariants every count of it holds.

A step reads records (``in``) and, for each, keeps it (``out``), rejects it with a reason (``rejected``) or
quarantines the line it could not read (``quarantined``). A stage may fan a record out into several *units*
of output (the filter cuts a document into many); every output, kept or rejected, is one unit. Accounting
then holds at two levels, in every chunk, shard entry and marker:

* records: ``in == out + sum(rejected) + sum(quarantined)``, where a record is ``out`` when at least one of
  its units was kept, and ``rejected`` when none was -- under its units' reason, or ``a+b`` (sorted, joined
  by ``+``) when they were rejected for different reasons;
* units: ``units.made == units.out + sum(units.rejected)``; ``units.out`` is the number of lines written to
  the output shard (the next stage's ``in``) and ``units.rejected`` counts the lines of the rejected file by
  reason.

For a one-result-per-record step both levels coincide, and its counts carry no ``units`` (the dedup and
decontamination phases): :attr:`Counts.unit_counts` derives them from the record counts, as it does for
chunks and markers written before fan-out existed.

:class:`Counts` adds (``a + b``, and ``sum(...)``), checks both invariants (:meth:`Counts.check`) and reads
and writes the dict every chunk and marker stores (:meth:`Counts.to_dict`, :meth:`Counts.from_dict`). The
shard step's markers and manifests use another schema (``read``, ``records``, ``quarantined``):
:meth:`Counts.from_shard_marker` and :meth:`Counts.to_shard_marker`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field


def add_stats(a: dict, b: dict) -> dict:
    """``a + b`` key by key, recursively: numbers add, nested dicts merge, a key in one only is kept (as
    datatrove's stats merge with ``+``). Neither argument is changed."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = add_stats(out[k], v)
        else:
            out[k] = out[k] + v
    return out


def _merged(a: Counter[str], b: Mapping[str, int]) -> Counter[str]:
    """``a`` and ``b`` summed by reason; the reasons of ``a`` first, then the new ones of ``b`` in order."""
    out = Counter(a)
    out.update(b)
    return out


@dataclass
class Units:
    """The units of output of some records: made, written (``out``) and rejected by reason."""

    made: int = 0
    out: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: Units) -> Units:
        return Units(self.made + other.made, self.out + other.out, _merged(self.rejected, other.rejected))

    def to_dict(self) -> dict:
        return {"made": self.made, "out": self.out, "rejected": dict(self.rejected)}


@dataclass
class Counts:
    """Records in, out, rejected and quarantined by reason, the units made of them, and a stage's ``stats``
    (nested dicts of numbers that add up, :func:`add_stats`).

    ``units`` is None for counts that do not count units (one unit a record); ``stats`` is None for counts
    that record none: :meth:`to_dict` leaves such keys out, so each writer keeps its schema."""

    in_: int = 0  # "in" in the dicts
    out: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    units: Units | None = None
    stats: dict | None = None

    @property
    def unit_counts(self) -> Units:
        """``units``, or when not counted, derived from the records: one unit a record out or rejected."""
        if self.units is not None:
            return self.units
        return Units(self.out + sum(self.rejected.values()), self.out, Counter(self.rejected))

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        units = stats = None
        if self.units is not None or other.units is not None:
            units = self.unit_counts + other.unit_counts
        if self.stats is not None or other.stats is not None:
            stats = add_stats(self.stats or {}, other.stats or {})
        return Counts(
            self.in_ + other.in_,
            self.out + other.out,
            _merged(self.rejected, other.rejected),
            _merged(self.quarantined, other.quarantined),
            units,
            stats,
        )

    def __radd__(self, other: int) -> Counts:
        """``0 + counts`` (what ``sum()`` starts with)."""
        if other == 0:
            return self + Counts()
        return NotImplemented

    def check(self, what: str) -> None:
        """Both invariants (see the module docstring); RuntimeError naming ``what`` when one is broken."""
        rejected, quarantined = sum(self.rejected.values()), sum(self.quarantined.values())
        if self.in_ != self.out + rejected + quarantined:
            raise RuntimeError(f"{what}: record accounting broken: {self.to_dict()}")
        u = self.unit_counts
        if u.made != u.out + sum(u.rejected.values()) or u.made < self.out + rejected:
            raise RuntimeError(f"{what}: unit accounting broken: {self.to_dict()}")

    def to_dict(self) -> dict:
        """``in``, ``out``, ``rejected``, ``quarantined``, then ``units`` and ``stats`` when not None: the
        counts of a chunk, a shard entry or a marker, in that key order."""
        out = {
            "in": self.in_,
            "out": self.out,
            "rejected": dict(self.rejected),
            "quarantined": dict(self.quarantined),
        }
        if self.units is not None:
            out["units"] = self.units.to_dict()
        if self.stats is not None:
            out["stats"] = self.stats
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> Counts:
        """The counts of a chunk, shard entry or marker (other keys are ignored; ``units`` and ``stats`` stay
        None when absent)."""
        units = d.get("units")
        return cls(
            d["in"],
            d["out"],
            Counter(d["rejected"]),
            Counter(d["quarantined"]),
            None if units is None else Units(units["made"], units["out"], Counter(units["rejected"])),
            d.get("stats"),
        )

    @classmethod
    def from_shard_marker(cls, m: Mapping) -> Counts:
        """The counts of a shard or reshard unit's marker, or of a shard manifest: ``read`` is ``in``,
        ``records`` (written) is ``out``; sharding quarantines what it cannot read and rejects nothing."""
        return cls(m["read"], m["records"], quarantined=Counter(m["quarantined"]))

    def to_shard_marker(self) -> dict:
        """``read``, ``records`` and ``quarantined``: these counts in the shard markers' schema."""
        return {"read": self.in_, "records": self.out, "quarantined": dict(self.quarantined)}

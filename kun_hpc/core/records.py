"""What a step makes of a record besides keeping it: a :class:`Rejected` record with its reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Rejected:
    """A record a stage drops, and why (a short reason code such as ``too_long``)."""

    record: dict
    reason: str
    detail: str = ""

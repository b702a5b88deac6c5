"""Exact integers past the range that orjson parses as integers.

orjson reads such an integer as a float. The few values that may be one are parsed again by the stdlib, every
integer as its exact decimal text: an id keeps all its digits, and a kept metadata integer outside the 64-bit
range is told apart, to be refused (``number_out_of_range``).
"""

from __future__ import annotations

import json
from typing import Any

# orjson reads an integer literal outside [-2**63, 2**64) as a float; such a float is at least this far
# from zero, and a value there is read again by the stdlib parser to tell an integer from a float.
_ORJSON_INT_MAX = float(2**64)
_ORJSON_INT_MIN = float(-(2**63))


class IntLiteral(str):
    """An integer as the stdlib JSON parser saw it: its exact decimal text."""


class OutOfRange(ValueError):
    """Says which number: "the integer <its digits>"."""


def past_int64(v: Any) -> bool:
    """Whether ``v`` (as orjson parsed it) holds a float where the JSON may have held a big integer."""
    t = type(v)
    if t is float:
        return v >= _ORJSON_INT_MAX or v <= _ORJSON_INT_MIN
    if t is dict:
        return any(past_int64(x) for x in v.values())
    if t is list:
        return any(past_int64(x) for x in v)
    return False


def exact_json(raw: bytes) -> Any:
    """``raw`` parsed by the stdlib, every integer as an :class:`IntLiteral` (exact, any size)."""
    return json.loads(raw, parse_int=IntLiteral)


def int64_values(v: Any) -> Any:
    """``v`` from :func:`exact_json` with its integers as ints; :class:`OutOfRange` (the literal) for
    one that orjson cannot write (outside [-2**63, 2**64))."""
    if type(v) is IntLiteral:
        if len(v) > 21 or not -(2**63) <= int(v) < 2**64:
            raise OutOfRange(f"the integer {v}")
        return int(v)
    if type(v) is dict:
        return {k: int64_values(x) for k, x in v.items()}
    if type(v) is list:
        return [int64_values(x) for x in v]
    return v

"""The base of every validated spec (config blocks, attack and defense parameters) and its one-line errors."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

COUNT_LIMIT = 1_000_000
"""The largest count (iterations, epochs, steps, restarts, sizes) an attack or defense parameter takes:
10¹² iterations would never end, and a size that large would exhaust memory before the first step."""
REAL_LIMIT = 3.4028234663852886e38  # float32's largest finite value: cells compute in float32


class StrictModel(BaseModel):
    """Unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BoundedParams(StrictModel):
    """The parameters of an attack or defense: unknown keys are errors, every count is at most
    :data:`COUNT_LIMIT` and every real is finite and within float32's range (README: Bad input).

    ``large_counts`` names the fields allowed a larger count (each with its own ``le`` bound).
    """

    large_counts: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _bounded(self) -> BoundedParams:
        for name in type(self).model_fields:
            for value in _scalars(getattr(self, name)):
                if isinstance(value, bool):
                    continue
                if isinstance(value, int) and abs(value) > COUNT_LIMIT and name not in self.large_counts:
                    raise ValueError(f"{name}: {value} is larger than {COUNT_LIMIT:,} (a count this large would never finish)")
                if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= REAL_LIMIT):
                    raise ValueError(f"{name}: {value:g} is not a finite number within float32's range (±{REAL_LIMIT:.3g})")
        return self


def _scalars(value: Any) -> list[Any]:
    """The numbers of a parameter value (itself, or the items of a tuple or list)."""
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _scalars(item)]
    return [value]


def first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ""
    for part in first["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("value_error", "assertion_error"):
        return msg if msg.split(":")[0] in loc or not loc else f"{loc}: {msg}"
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    return f"{loc}: {msg} (got {shown})" if loc else f"{msg} (got {shown})"

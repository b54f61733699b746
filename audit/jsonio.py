"""Writing results: atomic file writes, plain JSON values (no NaN, no numpy types) and typed diagnostics."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

D = TypeVar("D", bound="Diagnostics")


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write ``text`` (UTF-8) or bytes to a temporary file beside ``path`` and rename it into place (never half-written)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def jsonable(value: Any) -> Any:
    """Diagnostics → plain JSON types (numpy scalars/arrays to Python, anything else to its string)."""
    return json.loads(json.dumps(value, default=_plain))


def _plain(o: Any) -> Any:
    if isinstance(o, Diagnostics):
        return o.to_json()
    return o.tolist() if hasattr(o, "tolist") else str(o)


def finite(value: Any) -> Any:
    """NaN/inf (a setting with no finished cells) → null, so a summary stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


@dataclass
class Diagnostics:
    """Base of the typed diagnostics an attack or a defense leaves after a run, stored as JSON.

    Each attack and defense declares a subclass whose fields are what it reports (``None``
    until set); readers (the report, the minimax stage) use the attributes, so a renamed
    field breaks the type check instead of silently blanking a report section. Mapping
    access (``d["key"]``, ``d.get``, ``in``) is kept for interactive use and old tests;
    :meth:`update` refuses a field the class does not declare.
    """

    def update(self, values: dict[str, Any] | None = None, /, **more: Any) -> None:
        """Set declared fields; an undeclared name is a programming error (``AttributeError``)."""
        names = {f.name for f in fields(self)}
        for key, value in {**(values or {}), **more}.items():
            if key not in names:
                raise AttributeError(f"{type(self).__name__} declares no diagnostic {key!r} (declared: {', '.join(sorted(names))})")
            setattr(self, key, value)

    def setdefault(self, key: str, value: Any) -> Any:
        if self.get(key) is None:
            self.update(**{key: value})
        return self[key]

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update(**{key: value})

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in {f.name for f in fields(self)} and getattr(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default

    def to_json(self) -> dict[str, Any]:
        """The fields that were set, as plain JSON values (unset fields are left out)."""
        return jsonable({f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None})

    @classmethod
    def from_json(cls: type[D], values: dict[str, Any] | None) -> D:
        """Read stored diagnostics back; fields this version does not declare are ignored (older/newer runs)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in names})


def pack_points(points: Any, task: str) -> dict[str, Any]:
    """One split's per-point metric (:meth:`audit.models.victim.Fitted.pointwise`, shape (n,)) as JSON: a bit per
    point for classification (correct or not), float32 squared errors for regression, base64 either way."""
    import base64

    import numpy as np

    points = np.asarray(points)
    if task == "classification":
        return {"encoding": "bits", "n": len(points), "data": base64.b64encode(np.packbits(points > 0).tobytes()).decode()}
    return {"encoding": "float32", "n": len(points), "data": base64.b64encode(points.astype("<f4").tobytes()).decode()}


def unpack_points(packed: dict[str, Any]) -> Any:
    """:func:`pack_points` reversed: shape (n,) float64, 100 × correct or the squared error; None when not recorded."""
    import base64

    import numpy as np

    if not packed or "data" not in packed:
        return None
    raw = base64.b64decode(packed["data"])
    if packed.get("encoding") == "bits":
        return 100.0 * np.unpackbits(np.frombuffer(raw, np.uint8))[: int(packed["n"])].astype(np.float64)
    return np.frombuffer(raw, "<f4").astype(np.float64)

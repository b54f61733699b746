"""Defense registry. One contract (DESIGN.md): see :mod:`audit.defenses.base`."""

from audit.defenses.base import Defense, DefenseResult, NoDefense
from audit.defenses.robust_regression import Huber, Ransac, Trim

DEFENSES: dict[str, type[Defense]] = {cls.name: cls for cls in (NoDefense, Trim, Huber, Ransac)}

__all__ = ["DEFENSES", "Defense", "DefenseResult", "NoDefense"]

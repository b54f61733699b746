"""Defense registry. One contract (DESIGN.md): see :mod:`audit.defenses.base`."""

from audit.defenses.base import Defense, DefenseResult, NoDefense

DEFENSES: dict[str, type[Defense]] = {cls.name: cls for cls in (NoDefense,)}

__all__ = ["DEFENSES", "Defense", "DefenseResult", "NoDefense"]

"""Attack registry: name → ART poisoning attack class with the audit's contract."""

from audit.attacks.back_gradient import BackGradient
from audit.attacks.base import AttackContext, AttackParams, AuditAttack
from audit.attacks.gradient_canceling import GradientCanceling
from audit.attacks.label_flip import LabelFlip
from audit.attacks.minmax import MinMax
from audit.attacks.optp import OptP
from audit.attacks.regimes import RegimeA, RegimeB, RegimeC
from audit.attacks.statp import StatP
from audit.attacks.tgda import TGDA
from audit.catalog import BATTERY, ProfileSetting

#: the attacks this package ships, by registry name (:data:`ATTACKS` may gain others at run time)
BUILTIN_ATTACKS: dict[str, type[AuditAttack]] = {
    cls.name: cls for cls in (LabelFlip, GradientCanceling, StatP, OptP, TGDA, BackGradient, MinMax, RegimeA, RegimeB, RegimeC)
}
ATTACKS: dict[str, type[AuditAttack]] = dict(BUILTIN_ATTACKS)


def profile_settings(profile: str) -> dict[str, ProfileSetting]:
    """How each registered attack runs under ``profile`` (``quick``, ``standard`` or ``paper``), by registry name: the
    attack classes' own :attr:`AuditAttack.profiles` entries (an attack absent runs at its defaults at every seed)."""
    return {name: cls.profiles[profile] for name, cls in ATTACKS.items() if profile in cls.profiles}


def spec_setting(profile: str, name: str, key: str) -> ProfileSetting | None:
    """How the attack ``name`` stored under ``key`` runs under ``profile``: the battery entry ``key``'s own setting
    where it has one (``BatteryEntry.profiles``; an entry of the same attack), else the attack class's."""
    own = profile_settings(profile)
    entry = next((e for e in BATTERY if e.id == key and e.attack == name), None)
    return entry.setting(profile, own) if entry is not None else own.get(name)


__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackParams",
    "AuditAttack",
    "BUILTIN_ATTACKS",
    "BackGradient",
    "GradientCanceling",
    "LabelFlip",
    "MinMax",
    "OptP",
    "RegimeA",
    "RegimeB",
    "RegimeC",
    "StatP",
    "TGDA",
    "profile_settings",
    "spec_setting",
]

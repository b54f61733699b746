"""The confirmation stage's attacks: the battery at its paper's settings (docs: README, "The verdict").

The grid screens every setting with the run's profile. A verdict resting on that screen alone is
a lower bound when the profile reduced an attack, so the recommended setting and every setting
tied with it are re-attacked by each attack of the battery at its paper's settings and every
seed (:meth:`audit.config.AuditConfig.confirmation_attacks`, keys ``<id>@paper``). A confirmed
setting whose defense filters also meets the confirming gradient attacks adapted to its filter
(keys ``<id>@paper~adaptive``, :mod:`audit.grid.adaptive`), as the grid's own attacks do.

Which settings are confirmed is decided from the results (:func:`audit.grid.runner.run_confirmation`);
the cells are ordinary cells of the store: resumable, cached, run by either executor.
"""

from __future__ import annotations

from audit.config import CONFIRM_SUFFIX, AttackSpec, AuditConfig
from audit.grid.adaptive import ADAPTIVE_SUFFIX, adaptive_key, filtering_defenses, grid_axes

__all__ = ["CONFIRM_SUFFIX", "confirm_attack_keys", "confirm_axes", "is_confirmation"]


def is_confirmation(attack_key: str) -> bool:
    """Whether a cell's attack key is a confirmation attack's (``back_gradient@paper``, or its adaptive form)."""
    return attack_key.removesuffix(ADAPTIVE_SUFFIX).endswith(CONFIRM_SUFFIX)


def confirm_axes(config: AuditConfig) -> list[tuple[str, AttackSpec, list[str]]]:
    """``(cell attack key, attack spec, defense keys)`` of the confirmation stage of a resolved config: each
    confirmation attack against every defense, then, for the filtering defenses, its adaptive form when the
    attack is one the adaptive stage adapts (a gradient attack, or one whose grid twin ``adaptive.attacks`` names).

    Which (candidate, defense) settings get these cells is the stage's decision, not the config's.
    """
    specs = config.confirmation_attacks()
    axes = [(s.key, s, list(config.defense_keys)) for s in specs]
    filters = filtering_defenses(config)
    if config.adaptive.enabled == "off" or not filters:
        return axes
    adapted_names = {config.attack_spec(k).name for k in config.adaptive.attacks or [] if any(a.key == k for a in config.attacks)}
    for s in specs:
        if not s.attack.modifies and (s.attack.adaptive or s.name in adapted_names):
            axes.append((adaptive_key(s.key), s, filters))
    return axes


def all_axes(config: AuditConfig) -> list[tuple[str, AttackSpec, list[str]]]:
    """The grid's axes (:func:`audit.grid.adaptive.grid_axes`), then the confirmation stage's: every attack key a cell may have."""
    return grid_axes(config) + confirm_axes(config)


def confirm_attack_keys(config: AuditConfig) -> list[str]:
    """The keys of :func:`confirm_axes` in order."""
    return [key for key, _, _ in confirm_axes(config)]

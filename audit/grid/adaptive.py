"""The adaptive stage: every filtering defense of the grid against attackers that know it.

A defense judged only against attacks that ignore it gets credit it has not earned: the
attacker of the threat model knows the training procedure (README: How the audit works), and a filter is part
of it (Carlini & Wagner 2017; Tramèr et al. 2020). For each filtering defense ``d``
(:attr:`audit.defenses.Defense.filters`) and each adaptive attacker ``a`` the grid gets the
cells ``(h, a~adaptive, ε, d, s)``, whose poisons are crafted knowing ``d``:

1. **a start**: the attack's non-adaptive poisons of the same cell and, where it has one, its own
   defense-aware mode (:meth:`audit.attacks.AuditAttack.against`: Gradient Canceling, back-gradient
   and min-max optimise inside a sphere/slab sanitiser's acceptance region, Koh, Steinhardt &
   Liang 2022, §4; back-gradient holds its poisons' training loss under the loss filter's cut) —
   whichever does more damage behind the filter;
2. **filter in the loop** (``adaptive.rounds`` rounds): apply ``d`` to ``D_tr ∪ D_p``; the
   poisons it removed are re-crafted against the model trained on what survived, with the
   survivors as the attacker's training set — twice as many candidates as were removed, of
   which the ones the filter accepts (beside the survivors) replace them; repeat (a round that
   gains nothing does not stop the loop: the next, from other survivors, may). Of the rounds'
   poison sets the attacker keeps the one whose defended model has the worst metric on the
   attacker's own split D_att (README: Four roles for the data; D_val only in the papers' setting,
   ``threat.attacker_reads: validation``) — never on the split the recommendation is chosen on.

Min-max (convex victims, sanitisers in the grid) also runs against no defense: its poisons are
then the box's, and its diagnostics carry the certified bound of the feature box alone, the
other end of the report's bracket.

The worst case the recommendation and the gate use is taken over the non-adaptive and the
adaptive cells alike (:func:`audit.report.recommend.aggregate` over :meth:`RunPlan.attack_axes`),
so an adaptive attacker can only lower a defense's standing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from audit.attacks import AttackContext
from audit.config import AttackSpec, AuditConfig, DefenseSpec
from audit.errors import AuditError
from audit.grid.cells import apply_defense
from audit.seeding import derive_seed

ADAPTIVE_SUFFIX = "~adaptive"
MINMAX = "minmax"
SANITISER_DEFENSES = ("sphere", "slab", "sphere_slab")


def adaptive_key(attacker: str) -> str:
    """The attack key an adaptive attacker's cells are stored under (``gradient_canceling~adaptive``)."""
    return attacker + ADAPTIVE_SUFFIX


def is_adaptive(attack_key: str) -> bool:
    return attack_key.endswith(ADAPTIVE_SUFFIX)


def base_attacker(attack_key: str) -> str:
    """The grid attack's id (or ``minmax``) an adaptive key was made from."""
    return attack_key.removesuffix(ADAPTIVE_SUFFIX)


def filtering_defenses(config: AuditConfig) -> list[str]:
    """The keys of the grid's defenses that remove points, in config order."""
    return [d.key for d in config.defenses if d.defense.filters]


def resolve_adaptive(config: AuditConfig, task: str, victim_kind: str, convex: bool, n_classes: int | None = 2) -> AuditConfig:
    """``config`` with ``adaptive.attacks`` written out (idempotent; see :class:`audit.config.AdaptiveSpec`).

    ``convex``: the victim is softmax regression (min-max applies). Min-max joins the default set
    for two classes only: with c classes each round maximises c(c − 1) margins (≈ 20 min at
    ε = 10 % on ten-class mnist5k, 2 s on '1' vs '7'; examples/benchmarks/README.md) — list
    ``minmax`` under ``adaptive.attacks`` to run it on more. Raises :class:`AuditError` for an id
    that is neither a grid attack nor ``minmax``, or min-max where it cannot run.
    """
    spec = config.adaptive
    if spec.enabled == "off" or not filtering_defenses(config):
        return config.model_copy(update={"adaptive": spec.model_copy(update={"attacks": []})}) if spec.attacks is None else config
    keys = [a.key for a in config.attacks if not a.attack.modifies]  # the adaptive stage re-crafts injected poisons only
    if spec.attacks is None:
        chosen = [a.key for a in config.attacks if a.attack.adaptive] or keys  # the attack classes' ``adaptive``
        sanitised = any(config.defense_spec(d).name in SANITISER_DEFENSES for d in filtering_defenses(config))
        if convex and task == "classification" and victim_kind == "torch" and sanitised and n_classes == 2 and MINMAX not in chosen:
            chosen.append(MINMAX)
        return config.model_copy(update={"adaptive": spec.model_copy(update={"attacks": chosen})})
    for name in spec.attacks:
        if name == MINMAX and name not in keys:
            if not (convex and task == "classification" and victim_kind == "torch"):
                raise AuditError("adaptive.attacks: 'minmax' needs softmax regression (a PyTorch model whose parameters all belong to one nn.Linear)")
        elif name not in keys:
            if any(a.key == name for a in config.attacks):
                raise AuditError(f"adaptive.attacks: {name!r} modifies the training set; the adaptive stage re-crafts injected poisons only")
            raise AuditError(f"adaptive.attacks: {name!r} is not the id of an attack of this run; valid: {', '.join([*keys, MINMAX])}")
    if len(set(spec.attacks)) != len(spec.attacks):
        raise AuditError(f"adaptive.attacks: values repeat ({spec.attacks!r})")
    return config


def attacker_spec(config: AuditConfig, attacker: str) -> AttackSpec:
    """The attack an adaptive attacker runs: the grid attack of that id, or min-max (box only unless a
    sanitiser's mode lays its region over it)."""
    if attacker == MINMAX and attacker not in {a.key for a in config.attacks}:
        return AttackSpec.model_construct(name=MINMAX, id=MINMAX, params={"defense": "none"}, seeds=None)
    return config.attack_spec(attacker)


def attacker_defenses(config: AuditConfig, attacker: str) -> list[str]:
    """The defenses an adaptive attacker faces: every filtering defense; min-max also none (the box's bound)."""
    out = filtering_defenses(config)
    if attacker == MINMAX and "none" in config.defense_keys:
        out = ["none", *out]
    return out


def adaptive_axes(config: AuditConfig) -> list[tuple[str, AttackSpec, list[str]]]:
    """``(cell attack key, attack spec, defense keys)`` of each adaptive attacker of a resolved config."""
    if config.adaptive.enabled == "off":
        return []
    return [(adaptive_key(a), attacker_spec(config, a), attacker_defenses(config, a)) for a in config.adaptive.attacks or []]


def grid_axes(config: AuditConfig) -> list[tuple[str, AttackSpec, list[str]]]:
    """``(cell attack key, attack spec, defense keys)`` of the grid: each attack against every defense, then each
    adaptive attacker against the defenses it adapts to — what the screen's worst case is over."""
    return [(a.key, a, list(config.defense_keys)) for a in config.attacks] + adaptive_axes(config)


def adaptive_params(spec: AttackSpec, defense: DefenseSpec, rate: float) -> tuple[list[dict[str, Any]], bool]:
    """The attack's parameters against ``defense`` — one setting per variant of its defense-aware mode it sweeps
    (:meth:`AuditAttack.against_sweep`) — and whether they are its own defense-aware mode."""
    own = spec.attack.against(defense.name, defense.params, rate)
    if own is None:
        return [dict(spec.params)], False
    return [{**spec.params, **variant} for variant in spec.attack.against_sweep(own, dict(spec.params))], True


OVERSAMPLE = 2  # candidates crafted per removed poison in a filter-in-the-loop round


def _recraft(
    spec: AttackSpec,
    params: dict[str, Any],
    defense: DefenseSpec,
    ctx: AttackContext,
    fitted: Any,
    x_kept: np.ndarray,
    y_kept: np.ndarray,
    x_stay: np.ndarray,
    y_stay: np.ndarray,
    k: int,
    defense_seed: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One filter-in-the-loop round: craft ``OVERSAMPLE·k`` candidates against ``fitted`` (the model
    trained on what survived, ``x_kept``) with the survivors as the training set, put them all
    through the filter beside the survivors and keep ``k`` of them, those it accepts first.

    Returns the next poison set: the surviving poisons ``x_stay`` then the ``k`` chosen, shapes (m, d), (m,).
    """
    survivors = dataclasses.replace(ctx.dataset, x_train=x_kept, y_train=y_kept)
    want = min(OVERSAMPLE * k, len(y_kept))
    sub = AttackContext(survivors, ctx.victim, fitted, ctx.candidate, want / len(y_kept), seed)
    x_new, y_new = spec.attack.for_context(params, sub).poison(x_kept, y_kept)
    x_new, y_new = np.asarray(x_new, x_stay.dtype), np.asarray(y_new, y_stay.dtype)
    if len(y_new) < k:
        raise AuditError(f"adaptive {spec.key}: a round crafted {len(y_new)} poisons to replace {k}")
    trial = defense.defense.for_cell(ctx.budget, defense_seed, ctx.dataset, defense.params)
    x_try, y_try = np.concatenate([ctx.dataset.x_train, x_stay, x_new]), np.concatenate([ctx.dataset.y_train, y_stay, y_new])
    accepted = np.asarray(trial.apply(x_try, y_try, ctx.victim, ctx.candidate).keep, bool)[-len(y_new) :]
    pick = np.argsort(~accepted, kind="stable")[:k]  # accepted candidates first, in crafting order
    return np.concatenate([x_stay, x_new[pick]]), np.concatenate([y_stay, y_new[pick]])


def craft_adaptive(
    spec: AttackSpec,
    defense: DefenseSpec,
    ctx: AttackContext,
    rounds: int,
    defense_seed: int,
    train_seed: int,
    initial: tuple[np.ndarray, np.ndarray, dict] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], tuple[Any, np.ndarray, Any]]:
    """Poisons for one adaptive cell (module docstring).

    Parameters
    ----------
    spec : AttackSpec
        The attack to adapt.
    defense : DefenseSpec
        The filter it faces (applied at the assumed rate ``ctx.budget``, seeded ``defense_seed``,
        as the grid cell applies it).
    ctx : AttackContext
        The cell: clean data, victim, clean model, ``h``, ε and the attack's seed.
    rounds : int
        Filter-in-the-loop rounds after the first crafting.
    train_seed : int
        The victim's training seed (the grid's retraining seed).
    initial : (x_p, y_p, diagnostics) or None
        The attack's non-adaptive poisons of this cell. They start the rounds, unless the attack's
        own defense-aware mode does more damage behind the filter (both are tried when it has one).

    Returns
    -------
    x_p : ndarray, shape (m, d)
    y_p : ndarray, shape (m,)
    diagnostics : dict
        ``attack``: the first crafting's diagnostics (the attack's ``Diagnostics``); ``adaptive``:
        whether the attack has its own mode (``own_mode``), which start the rounds took (``start``:
        ``own_mode``, ``non_adaptive`` or ``crafted``), per round the poisons the filter removed and
        the defended model's metric on the attacker's split (``att_metric``; round 0 once per start), and the
        round kept.
    applied : (fitted, keep, defense diagnostics)
        :func:`audit.grid.cells.apply_defense` of the kept round — what the grid cell would
        recompute from these poisons (same defense seed and training seed).
    """
    data, victim = ctx.dataset, ctx.victim
    settings, own = adaptive_params(spec, defense, ctx.budget)
    sign = 1.0 if data.task == "classification" else -1.0  # the defender wants a high accuracy, a low MSE
    n = len(data.y_train)

    x_att, y_att = data.attacker_target()  # D_att: the attacker judges its rounds where it may look (D_val in the papers' setting)

    def behind(x_p: np.ndarray, y_p: np.ndarray) -> tuple[float, tuple[Any, np.ndarray, Any]]:
        """The defended model's metric on the attacker's split after ``D_tr ∪ (x_p, y_p)``, and the defense's result."""
        x_mix, y_mix = np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p])
        cell_defense = defense.defense.for_cell(ctx.budget, defense_seed, data, defense.params)
        applied = apply_defense(cell_defense, x_mix, y_mix, victim, ctx.candidate, train_seed)
        return float(applied[0].metric(x_att, y_att)), applied

    starts = []  # (name, x_p, y_p, attack diagnostics): the attack's own mode (each setting it sweeps) and its non-adaptive poisons
    named = {}
    if own or initial is None:
        for params in settings:
            name = ("own_mode" if own else "crafted") + (f" (evade_scale {params['evade_scale']:g})" if len(settings) > 1 else "")
            attack = spec.attack.for_context(params, ctx)
            x_own, y_own = attack.poison(data.x_train, data.y_train)
            starts.append((name, x_own, y_own, attack.diagnostics.to_json()))
            named[name] = params
    if initial is not None:
        starts.append(("non_adaptive", *initial))
    scored = [(behind(x, y), name, x, y, diag) for name, x, y, diag in starts]
    (val, applied), start, x_p, y_p, first = min(scored, key=lambda t: sign * t[0][0])  # the stronger start behind the filter
    params = named.get(start, settings[0])  # the rounds recraft with the winning setting
    history: list[dict[str, Any]] = [{"round": 0, "start": name, "removed": int((~a[1][n:]).sum()), "att_metric": v} for (v, a), name, *_ in scored]
    history = [h for h in history if h["start"] == start] + [h for h in history if h["start"] != start]
    best: tuple[int, float, np.ndarray, np.ndarray, tuple[Any, np.ndarray, Any]] = (0, val, x_p, y_p, applied)
    for r in range(1, rounds + 1):
        fitted, keep, _ = applied
        removed = ~keep[n:]
        if not removed.any():
            break
        x_mix, y_mix = np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p])
        x_p, y_p = _recraft(
            spec,
            params,
            defense,
            ctx,
            fitted,
            x_mix[keep],
            y_mix[keep],
            x_p[~removed],
            y_p[~removed],
            int(removed.sum()),
            defense_seed,
            derive_seed(ctx.seed, "round", r),
        )
        val, applied = behind(x_p, y_p)
        history.append({"round": r, "removed": int((~applied[1][n:]).sum()), "att_metric": val})
        if sign * val < sign * best[1]:
            best = (r, val, x_p, y_p, applied)
    return best[2], best[3], {"attack": first, "adaptive": {"own_mode": own, "start": start, "rounds": history, "kept_round": best[0]}}, best[4]

"""What a config may name and the constants it defaults to, without heavy imports: the built-in models, the minimax
paper's constants, the profiles' names and splits, the form of a profile's setting (each attack class declares its
own, ``AuditAttack.profiles``) and the default battery's order."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MODELS: dict[str, str] = {
    "logreg": "logistic regression, softmax cross-entropy (binary and multiclass), parameters in `linear`",
    "mlp": "fully connected network, `depth` hidden layers of `width` units, leaky ReLU (0.2)",
    "cnn": "two 3×3 conv layers (`width`, 2·`width` channels), max-pool, FC 128 (image data)",
    "ridge": "linear regression with the L2 term (ridge), squared loss ½(y − f)²",
    "relu2": "two-layer ReLU network (1/√m)Σ a_s ReLU(w_sᵀx/‖x‖), top layer ±1 fixed, binary, plain SGD (Wang, Mianjy & Arora 2021)",
    "lasso": "linear regression with an L1 term λ₁‖w‖₁ (axis `l1`), trained by FISTA",
    "elastic_net": "linear regression with L1 (`l1`) and L2 (`l2`) terms, trained by FISTA",
    "user": "your factory `package.module:function` returning an nn.Module, an ART PyTorchClassifier or a scikit-learn LogisticRegression/Ridge",
}


# ---------------------------------------------------------------------------- the minimax paper's constants
PAPER_L2_RANGE: tuple[float, float] = (-8.0, math.log(200.0))
"""carnerero-cano-2021's range of λ (log of the L2 strength on the summed loss; ρ = e^λ/N), Table 2 / C.2."""
PAPER_L2_LR: float = 0.8
"""β, the step of λ's descent in the minimax (Algorithm 1)."""
PAPER_CLEAN_WARM_START: float = math.log(5.0)
"""λ's start on clean data (the paper's MNIST setting)."""


# ---------------------------------------------------------------------------- profiles and the battery
PROFILE_NAMES: tuple[str, ...] = ("quick", "standard", "paper")
"""``profile`` of a config (and ``--profile``): how hard each attack of the battery works.

``paper`` runs every attack at its paper's settings (the attack classes' defaults) on every
seed; ``standard`` and ``quick`` are labelled reductions whose strength relative to ``paper``
is measured in ``examples/benchmarks/profile_strength.py`` (README: the profile table)."""


PROFILE_SPLITS: dict[str, int] = {"quick": 1, "standard": 3, "paper": 3}
"""How many draws of the data's partition (config ``splits``) each profile runs when the config sets none:
the split-to-split variation is part of what ``standard`` and ``paper`` intervals cover (README: Repeated splits)."""


@dataclass(frozen=True)
class ProfileSetting:
    """How one attack runs under a profile.

    ``params`` override the attack's defaults (a config's own ``params`` override them again);
    ``seeds`` is how many of the run's seeds it runs at (the first ones; None: all; a config
    that sets ``seeds`` runs them all); ``skip`` says why the profile's *default battery* leaves
    the attack out (an attack the config lists always runs).
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    seeds: int | None = None
    skip: str | None = None
    strength: str | None = None  # the reduction's measured damage against the paper setting's (the report prints it)


@dataclass(frozen=True)
class BatteryEntry:
    """One attack of the default battery: the id its cells are stored under, the registry name and
    the parameters that make it this entry (e.g. the label flip's variant).

    ``tasks`` narrows the attack class's tasks for this entry (None: all of them); ``profiles`` replaces the
    attack class's own setting (``AuditAttack.profiles``) under a profile for this entry only.
    """

    id: str
    attack: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    profiles: Mapping[str, ProfileSetting] = field(default_factory=dict)

    def applies(self, attack_cls: Any, task: str, kinds: Iterable[str]) -> bool:
        """Whether this entry runs against a victim of ``kinds`` on ``task``, ``attack_cls`` being its registry class."""
        tasks = attack_cls.tasks if self.tasks is None else self.tasks
        return task in attack_cls.tasks and task in tasks and bool(set(kinds) & set(attack_cls.victims))

    def setting(self, profile: str, own: Mapping[str, ProfileSetting]) -> ProfileSetting | None:
        """How this entry runs under ``profile``: its own setting, else the attack class's (``own``, by registry name)."""
        return self.profiles.get(profile, own.get(self.attack))


BATTERY: tuple[BatteryEntry, ...] = (
    BatteryEntry("label_flip_random", "label_flip", {"variant": "random"}),
    BatteryEntry("label_flip_adversarial", "label_flip", {"variant": "adversarial"}),
    BatteryEntry("statp", "statp"),
    BatteryEntry("gradient_canceling", "gradient_canceling"),
    # Gradient Canceling that aims at several targets and keeps the poisons its own split scores worst (target: search),
    # choosing its poisons' labels: in the box at or above the adversarial label flip where the paper's GC is not
    # (docs/maths.md "Where the box lets poisons reach a target"); ≈ 6 GC runs and retrainings a cell, so the quick
    # screen leaves it to the confirmation stage
    BatteryEntry(
        "gradient_canceling_search",
        "gradient_canceling",
        {"target": "search", "labels": "choose"},
        tasks=("classification",),
        profiles={
            "quick": ProfileSetting(
                skip="it attacks six targets and retrains the victim on each (≈ 13 s a ten-class mnist5k LR cell on 2 cores); "
                "the confirmation stage runs it at the verdict's setting"
            ),
            "standard": ProfileSetting(seeds=1, strength="Gradient Canceling's target search at its defaults, at the first seed only"),
        },
    ),
    BatteryEntry("back_gradient", "back_gradient"),
    BatteryEntry("tgda", "tgda"),
    BatteryEntry("optp", "optp"),
)
"""What an audit runs when its config lists no ``attacks``: each entry that applies to the task and
the victim (the attack classes' ``tasks`` and ``victims``) and that the profile does not leave out."""

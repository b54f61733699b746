"""What a config may name and the constants it defaults to, without heavy imports (a config is checked before torch
is loaded): the built-in models, the minimax paper's constants, the profiles and the default battery."""

from __future__ import annotations

import math
from collections.abc import Mapping
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
class BatteryEntry:
    """One attack of the default battery: the id its cells are stored under, the registry name and
    the parameters that make it this entry (e.g. the label flip's variant)."""

    id: str
    attack: str
    params: Mapping[str, Any] = field(default_factory=dict)


BATTERY: tuple[BatteryEntry, ...] = (
    BatteryEntry("label_flip_random", "label_flip", {"variant": "random"}),
    BatteryEntry("label_flip_adversarial", "label_flip", {"variant": "adversarial"}),
    BatteryEntry("statp", "statp"),
    BatteryEntry("gradient_canceling", "gradient_canceling"),
    BatteryEntry("back_gradient", "back_gradient"),
    BatteryEntry("tgda", "tgda"),
    BatteryEntry("optp", "optp"),
)
"""What an audit runs when its config lists no ``attacks``: each entry that applies to the task and
the victim (the attack classes' ``tasks`` and ``victims``) and that the profile does not leave out."""


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


PROFILES: dict[str, dict[str, ProfileSetting]] = {
    "paper": {},
    "standard": {
        "back_gradient": ProfileSetting(
            {"iterations": 20, "step": 2.0, "inner_steps": 50, "inner_lr": 0.3, "implicit": {"iterations": 100, "step": 0.99}},
            strength="back-gradient: convex victims (implicit) at the paper's settings, the same poisons (100 % of its damage); "
            "networks and ρ = 0 (unrolled) 20 iterations, α = 2, T = 50, η = 0.3: 96–106 % of the paper's unrolled damage (mnist5k LR)",
        ),
        "tgda": ProfileSetting(
            {"epochs": 100},
            seeds=1,
            strength="TGDA, 100 of 200 epochs at seed 0: 67–80 % of the paper setting's damage, 42–68 s against 91–124 s (mnist5k LR, ε = 10 %)",
        ),
    },
    "quick": {
        "label_flip": ProfileSetting(seeds=1),
        "statp": ProfileSetting(seeds=1),
        "optp": ProfileSetting(seeds=1),
        "gradient_canceling": ProfileSetting(
            {"epochs": 300}, seeds=1, strength="GC at 300 epochs: 92–109 % of the 1000-epoch damage, 2.2 s against 3.1 s (mnist5k LR, ε = 3–30 %)"
        ),
        "back_gradient": ProfileSetting(
            {
                "iterations": 5,
                "step": 4.0,
                "inner_steps": 30,
                "inner_lr": 0.5,
                "implicit": {"iterations": 50, "step": 0.99, "start_screen": 5, "inner_tol": 1e-5, "cg_tol": 1e-4},
            },
            seeds=1,
            strength="back-gradient: convex victims (implicit) 50 iterations, 5-iteration start screens, looser solves: 86–97 % of the "
            "paper setting's damage (mnist5k LR, ρ = 1e-3/1e-2, ε = 3–30 %; breast_cancer 93–103 %); 18–33 s per such cell against the paper "
            "setting's 41–47 s (ρ = 1e-2, ε = 10 %) with the K-FAC solves (2-core CPU); "
            "networks and ρ = 0 (unrolled) 5 iterations, α = 4, T = 30, η = 0.5",
        ),
        "tgda": ProfileSetting(
            skip="its generator game takes 1.5–2 min per cell on a 2-core CPU (mnist5k LR, 200 epochs); --profile standard or paper runs it"
        ),
    },
}
"""Per profile, the setting of each attack by registry name (absent: the attack's defaults, every seed)."""

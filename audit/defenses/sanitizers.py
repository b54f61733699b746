"""Sphere and slab sanitisers (Steinhardt, Koh & Liang 2017, §3; Koh, Steinhardt & Liang 2022, §2.2).

For class ``y`` with centroid ``μ_y``:

* **sphere**: remove ``x`` with ``‖x − μ_y‖₂ > r_y``;
* **slab**: remove ``x`` with ``|⟨x − μ_y, v_y⟩| > s_y``, ``v_y`` the unit vector between the
  centroids — binary: ``μ_1 − μ_0`` (the same line for both classes, up to sign);
  multiclass: ``μ_y − μ̄``, ``μ̄`` the mean of the other classes' centroids.

``centroids: oracle`` (default; Steinhardt et al.'s oracle defense) takes ``μ_y`` and the
thresholds from the clean training points — the attacker cannot move them; ``data`` takes
them from the mixed set the defense is given, as a defender without a trusted sample must
(Koh et al.'s data-dependent defenses, which poisons can drag). Thresholds are the
``quantile`` of the same points' scores per class; without one, ``1/(1 + rate)``: the
fraction of clean points kept equals the clean fraction of the mixed set at the assumed
poison rate, as the other filters remove that share. The region a point must lie in to
survive, with the feature box, is :class:`AcceptanceRegion` — what a defense-aware attacker
optimises inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from audit.defenses.base import Defense, DefenseParams, DefenseResult
from audit.jsonio import Diagnostics
from audit.maths.regions import AcceptanceRegion, sanitiser_level, sanitiser_region
from audit.models.candidate import Candidate


class SanitiserParams(DefenseParams):
    quantile: float | None = Field(None, gt=0, le=1)  # None: 1/(1 + rate)
    centroids: Literal["oracle", "data"] = "oracle"


@dataclass
class SanitiserDiagnostics(Diagnostics):
    """How many points the region rejected, at which quantile, with centroids from where."""

    removed: int | None = None
    quantile: float | None = None
    centroids: str | None = None


class _Sanitiser(Defense):
    """Sphere and/or slab around each class centroid (module docstring)."""

    filters: ClassVar[bool] = True

    Params = SanitiserParams
    Diagnostics = SanitiserDiagnostics
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    draws_randomness: ClassVar[bool] = False

    def __init__(
        self,
        rate: float,
        seed: int,
        quantile: float | None = None,
        centroids: str = "oracle",
        clean: tuple[np.ndarray, np.ndarray] | None = None,
        n_classes: int | None = None,
    ) -> None:
        super().__init__(rate, seed)
        self.quantile = quantile
        self.centroid_source = centroids
        self.clean = clean
        self.n_classes = n_classes

    @classmethod
    def from_dataset(cls, dataset: Any) -> dict[str, Any]:
        return {"clean": (dataset.x_train, dataset.y_train), "n_classes": dataset.n_classes}

    def level(self) -> float:
        """The quantile the thresholds are taken at."""
        return sanitiser_level(self.rate, self.quantile)

    def region(self, x: np.ndarray, y: np.ndarray) -> AcceptanceRegion:
        """The acceptance region this defense applies to the mixed set ``(x, y)``: from the clean
        training points (oracle) or from ``(x, y)`` itself (data)."""
        if self.centroid_source == "oracle" and self.clean is not None:
            ref_x, ref_y = self.clean
        else:
            ref_x, ref_y = x, y
        c = int(self.n_classes or int(max(np.max(ref_y), np.max(y)) + 1))
        return sanitiser_region(self.name, ref_x, ref_y, c, self.rate, self.quantile)

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        flat = np.asarray(x).reshape(len(x), -1)
        keep = self.region(flat, y).accepts(flat, y)
        diag = SanitiserDiagnostics(removed=int((~keep).sum()), quantile=self.level(), centroids=self.centroid_source)
        return DefenseResult(keep=keep, diagnostics=diag)


class SphereDefense(_Sanitiser):
    """Remove points farther than ``r_y`` from their class centroid (sphere defense)."""

    name: ClassVar[str] = "sphere"
    description: ClassVar[str] = "sphere: removes points far from their class centroid (Steinhardt et al. 2017; oracle centroids by default)"


class SlabDefense(_Sanitiser):
    """Remove points whose projection on the centroids' line lies beyond ``s_y`` (slab defense)."""

    name: ClassVar[str] = "slab"
    description: ClassVar[str] = "slab: removes points far along the line between class centroids (Steinhardt et al. 2017)"


class SphereSlabDefense(_Sanitiser):
    """Sphere and slab together: the oracle defense of Steinhardt et al.'s certificate."""

    name: ClassVar[str] = "sphere_slab"
    description: ClassVar[str] = "sphere + slab: both sanitisers (the defense Steinhardt et al. 2017 certify)"

"""ART's poison detectors wrapped to the defense contract (keep-mask = ART's ``is_clean_lst``).

These were designed for *backdoor* poisoning (a trigger pattern in a subset of one class);
the report says so next to their numbers.

* ``activation_clustering`` — ART ``ActivationDefence`` (Chen et al. 2018): per class,
  2-means on PCA-reduced activations, the smaller cluster is flagged.
* ``spectral_signature`` — ART ``SpectralSignatureDefense`` (Tran et al. 2018): per class,
  the points with the largest projection on the top singular vector of the centred
  activations, ``eps_multiplier`` × the expected poison share.
* ``roni`` — ART ``RONIDefense`` (Nelson et al.): reject points whose inclusion lowers
  validation accuracy; for scikit-learn victims.

ART reads the activations of the *last* layer of its classifier. For our networks that is
the logits, so the neural detectors get a classifier whose only layer is the penultimate
feature extractor (``module.features``; the inputs themselves for linear models).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from audit.defenses.base import Defense, DefenseResult
from audit.errors import AuditError
from audit.jsonio import Diagnostics
from audit.models.candidate import Candidate
from audit.seeding import numpy_global_seed


class _Penultimate(nn.Module):
    """The victim up to its penultimate layer: ``features(x)`` when it has one, else the flat input."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = getattr(self.module, "features", None)
        return features(x) if callable(features) else x.flatten(1)


def penultimate_classifier(fitted: Any, n_classes: int, input_shape: tuple[int, ...]) -> Any:
    """An ART PyTorchClassifier whose last (only) layer outputs the victim's penultimate features."""
    from art.estimators.classification import PyTorchClassifier

    from audit.models.surrogate import SklearnSurrogate

    module = fitted.module
    if module is None or isinstance(module, SklearnSurrogate):  # a scikit-learn model (its surrogate is for attacks)
        raise AuditError(
            "activation_clustering and spectral_signature need a torch victim (they read activations); use 'roni' for scikit-learn models"
        )
    wrapped = nn.Sequential(OrderedDict(features=_Penultimate(module))).eval()
    device = next(module.parameters()).device
    return PyTorchClassifier(
        wrapped, nn.CrossEntropyLoss(), input_shape=input_shape, nb_classes=n_classes, device_type="gpu" if device.type == "cuda" else "cpu"
    )


def _one_hot(y: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c, dtype=np.float32)[y.astype(int)]


@dataclass
class FlaggedDiagnostics(Diagnostics):
    """How many points ART's detector flagged as poison (and the audit removed)."""

    flagged: int | None = None


class _ArtDetector(Defense):
    filters: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    Diagnostics = FlaggedDiagnostics

    def _keep(self, is_clean: list[int], n: int) -> np.ndarray:
        keep = np.asarray(is_clean, dtype=bool)
        assert keep.shape == (n,), "ART returned a mask of the wrong length"
        return keep


class _PenultimateDetector(_ArtDetector):
    """Train on the mixed set, hand ART a penultimate-feature classifier, keep what it calls clean."""

    designed_for_backdoors: ClassVar[bool] = True
    victims: ClassVar[tuple[str, ...]] = ("torch",)

    def _detect(self, classifier: Any, x: np.ndarray, y_onehot: np.ndarray) -> list[int]:
        raise NotImplementedError

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        fitted = victim.fit(x, y, candidate.hparams, self.seed)
        c = int(victim.n_classes)
        with numpy_global_seed(self.seed):  # ART's KMeans/PCA draw from numpy's global generator
            is_clean = self._detect(penultimate_classifier(fitted, c, (x.shape[1],)), x, _one_hot(y, c))
        keep = self._keep(is_clean, len(y))
        return DefenseResult(keep=keep, diagnostics=FlaggedDiagnostics(flagged=int((~keep).sum())))


class ActivationClustering(_PenultimateDetector):
    """ART ActivationDefence on the penultimate features (2-means per class, smaller cluster flagged)."""

    name: ClassVar[str] = "activation_clustering"
    description: ClassVar[str] = "ART ActivationDefence on penultimate features (designed for backdoors)"

    def _detect(self, classifier: Any, x: np.ndarray, y_onehot: np.ndarray) -> list[int]:
        from art.defences.detector.poison import ActivationDefence

        detector = ActivationDefence(classifier, x, y_onehot)
        return detector.detect_poison(nb_clusters=2, reduce="PCA", nb_dims=min(10, x.shape[1]), cluster_analysis="smaller")[1]


class SpectralSignature(_PenultimateDetector):
    """ART SpectralSignatureDefense on the penultimate features, expecting the cell's poison share (×1.5)."""

    name: ClassVar[str] = "spectral_signature"
    description: ClassVar[str] = "ART SpectralSignatureDefense on penultimate features (designed for backdoors)"

    def _detect(self, classifier: Any, x: np.ndarray, y_onehot: np.ndarray) -> list[int]:
        from art.defences.detector.poison import SpectralSignatureDefense

        share = self.rate / (1 + self.rate)  # poisons / (clean + poisons)
        detector = SpectralSignatureDefense(classifier, x, y_onehot, expected_pp_poison=share, batch_size=512, eps_multiplier=1.5)
        return detector.detect_poison()[1]


class Roni(_ArtDetector):
    """ART RONIDefense for scikit-learn victims (reject on negative impact on validation accuracy)."""

    name: ClassVar[str] = "roni"
    description: ClassVar[str] = "ART RONIDefense (reject on negative impact) for scikit-learn victims"

    def __init__(self, rate: float, seed: int, validation: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__(rate, seed)
        self.validation = validation

    reads_validation: ClassVar[bool] = True
    designed_for_backdoors: ClassVar[bool] = True
    victims: ClassVar[tuple[str, ...]] = ("sklearn",)

    @classmethod
    def from_dataset(cls, dataset: Any) -> dict[str, Any]:
        return {"validation": dataset.defense_validation()}

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        from art.defences.detector.poison import RONIDefense

        if victim.kind != "sklearn":
            raise AuditError(
                "roni needs a scikit-learn victim (it refits the model once per point); "
                "use activation_clustering or spectral_signature for torch models"
            )
        if self.validation is None:
            raise AuditError("roni needs the validation split (the grid passes it)")
        fitted = victim.fit(x, y, candidate.hparams, self.seed)
        c = int(victim.n_classes)
        x_val, y_val = self.validation

        def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
            # ART's SklearnClassifier.predict returns probabilities; accuracy needs labels
            return float(np.mean(np.argmax(y_true, axis=1) == np.argmax(y_pred, axis=1)))

        with numpy_global_seed(self.seed):  # RONI draws its calibration and quiz sets from numpy's global generator
            detector = RONIDefense(fitted.to_art(), x, _one_hot(y, c), x_val, _one_hot(y_val, c), perf_func=accuracy)
            _, is_clean = detector.detect_poison()
        keep = self._keep(is_clean, len(y))
        return DefenseResult(keep=keep, diagnostics=FlaggedDiagnostics(flagged=int((~keep).sum())))

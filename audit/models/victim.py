"""Victims: a model spec that builds and trains a fresh model per candidate and seed.

Three kinds share one interface (:class:`Victim.fit` → :class:`Fitted`):

* :class:`TorchVictim` — an ``nn.Module`` from the zoo or a user factory, or the module of
  an ART ``PyTorchClassifier`` (re-initialised and retrained with the audit's procedure);
  trained with :func:`audit.models.training.train`.
* :class:`SklearnVictim` — scikit-learn ``LogisticRegression`` / ``Ridge`` retrained with
  their own solver; the L2 strength maps as ``C = 1/(ρ·n)`` 
  (``C = inf`` at ρ = 0) and ``alpha = ρ·n`` (ridge loss ½(y − f)²), so both minimise the objective of DESIGN.md.

Every fitted victim exports an ART estimator (:meth:`Fitted.to_art`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from audit.models.training import TrainConfig, TrainResult, data_loss, train

MODEL_AXES = ("width", "depth")
TRAINING_AXES = ("l2", "l1", "epochs", "lr", "batch_size", "momentum")


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (parameter initialisation) and numpy's legacy one."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class Fitted(ABC):
    """A trained victim: predictions, the audit metric and an ART estimator."""

    task: str
    n_classes: int | None
    train_result: dict[str, Any] = field(default_factory=dict)

    @abstractmethod
    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits/probability scores (n, c) for classification, predictions (n,) for regression."""

    @abstractmethod
    def to_art(self, clip_values: tuple[float, float] | None = None) -> Any:
        """The model as an ART estimator."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        s = self.scores(x)
        return s.argmax(axis=1) if self.task == "classification" else s

    def metric(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy in percent (classification) or mean squared error (regression)."""
        pred = self.predict(x)
        if self.task == "classification":
            return float(100.0 * np.mean(pred == y))
        return float(np.mean((pred - y) ** 2))

    @abstractmethod
    def class_losses(self, x: np.ndarray) -> np.ndarray:
        """Loss of each point under every possible label, shape (n, c) (classification only)."""


@dataclass
class FittedTorch(Fitted):
    module: nn.Module | None = None
    device: torch.device = torch.device("cpu")
    input_shape: tuple[int, ...] = ()

    @torch.no_grad()
    def scores(self, x: np.ndarray) -> np.ndarray:
        assert self.module is not None
        out = []
        for start in range(0, len(x), 4096):
            xb = torch.as_tensor(x[start : start + 4096], dtype=torch.float32, device=self.device)
            out.append(self.module(xb).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_classes or 1))

    def class_losses(self, x: np.ndarray) -> np.ndarray:
        logits = torch.as_tensor(self.scores(x))
        return (-torch.log_softmax(logits, dim=1)).numpy()

    def to_art(self, clip_values: tuple[float, float] | None = None) -> Any:
        from art.estimators.classification import PyTorchClassifier
        from art.estimators.regression import PyTorchRegressor

        device_type = "gpu" if self.device.type == "cuda" else "cpu"
        if self.task == "classification":
            return PyTorchClassifier(
                model=self.module,
                loss=nn.CrossEntropyLoss(),
                input_shape=self.input_shape,
                nb_classes=int(self.n_classes or 2),
                clip_values=clip_values,
                device_type=device_type,
            )
        return PyTorchRegressor(
            model=self.module, loss=nn.MSELoss(), input_shape=self.input_shape, device_type=device_type
        )


@dataclass
class FittedSklearn(Fitted):
    estimator: Any = None

    def scores(self, x: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            proba = self.estimator.predict_proba(x)
            full = np.zeros((len(x), self.n_classes or proba.shape[1]))
            full[:, self.estimator.classes_.astype(int)] = proba
            return full
        return self.estimator.predict(x)

    def class_losses(self, x: np.ndarray) -> np.ndarray:
        return -np.log(np.clip(self.scores(x), 1e-12, None))

    def to_art(self, clip_values: tuple[float, float] | None = None) -> Any:
        if self.task == "classification":
            from art.estimators.classification.scikitlearn import SklearnClassifier

            return SklearnClassifier(model=self.estimator, clip_values=clip_values)
        from art.estimators.regression.scikitlearn import ScikitlearnRegressor

        return ScikitlearnRegressor(model=self.estimator, clip_values=clip_values)


class Victim(ABC):
    """Builds and trains a fresh model for a candidate ``hparams`` and a seed."""

    task: str
    n_classes: int | None
    description: str

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, hparams: dict[str, Any], seed: int) -> Fitted:
        """Train from scratch on ``(x, y)`` with the candidate's hyperparameters."""


class TorchVictim(Victim):
    """A torch module factory plus the audit's training procedure.

    Parameters
    ----------
    build : callable(hparams) -> nn.Module
        Builds an untrained module; called right after seeding, so initialisation is seeded.
    training : dict
        Training defaults (model defaults overridden by the config's ``training`` block);
        candidate axes in ``hparams`` override them again.
    """

    def __init__(
        self,
        build: Callable[[dict[str, Any]], nn.Module],
        task: str,
        n_classes: int | None,
        input_shape: tuple[int, ...],
        training: dict[str, Any],
        device: torch.device,
        description: str,
    ) -> None:
        self.build = build
        self.task = task
        self.n_classes = n_classes
        self.input_shape = input_shape
        self.training = training
        self.device = device
        self.description = description

    def train_config(self, hparams: dict[str, Any]) -> TrainConfig:
        merged = {**self.training, **{k: v for k, v in hparams.items() if k in TRAINING_AXES}}
        return TrainConfig(**{k: v for k, v in merged.items() if v is not None or k == "batch_size"})

    def fit(self, x: np.ndarray, y: np.ndarray, hparams: dict[str, Any], seed: int) -> FittedTorch:
        seed_everything(seed)
        module = self.build(hparams).to(self.device)
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        dtype = torch.long if self.task == "classification" else torch.float32
        yt = torch.as_tensor(y, dtype=dtype, device=self.device)
        result: TrainResult = train(module, xt, yt, self.task, self.train_config(hparams), seed)
        return FittedTorch(
            task=self.task,
            n_classes=self.n_classes,
            train_result=result.as_dict(),
            module=module,
            device=self.device,
            input_shape=self.input_shape,
        )

    def loss(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return data_loss(module(x), y, self.task)


def reinitialise(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every sub-module's ``reset_parameters`` called (seeded by the caller)."""
    fresh = copy.deepcopy(module)
    for sub in fresh.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return fresh


class SklearnVictim(Victim):
    """A scikit-learn ``LogisticRegression`` or ``Ridge``, refitted per candidate with its own solver."""

    def __init__(self, estimator: Any, task: str, n_classes: int | None, description: str) -> None:
        self.estimator = estimator
        self.task = task
        self.n_classes = n_classes
        self.description = description

    def fit(self, x: np.ndarray, y: np.ndarray, hparams: dict[str, Any], seed: int) -> FittedSklearn:
        from sklearn.base import clone

        est = clone(self.estimator)
        rho = float(hparams.get("l2", 0.0))
        n = len(y)
        params = est.get_params()
        if self.task == "classification":
            # C·Σℓ + ½‖w‖²  ⇔  mean ℓ + 1/(2Cn)‖w‖²  ⇒  C = 1/(ρ n)
            est.set_params(C=np.inf if rho == 0 else 1.0 / (rho * n))
        elif type(est).__name__ == "Lasso":
            # (1/2n)‖y − Xw‖² + α‖w‖₁  =  mean ½(y − f)² + λ₁‖w‖₁  ⇒  α = λ₁
            est.set_params(alpha=float(hparams.get("l1", 0.0)))
        elif type(est).__name__ == "ElasticNet":
            # α·r‖w‖₁ + ½α(1 − r)‖w‖²  ⇒  α = ρ + λ₁, r = λ₁/(ρ + λ₁)
            l1 = float(hparams.get("l1", 0.0))
            est.set_params(alpha=rho + l1, l1_ratio=l1 / (rho + l1) if rho + l1 > 0 else 0.5)
        else:
            # ‖y − Xw‖² + α‖w‖²  ⇔  mean ½(y − f)² + (α/2n)‖w‖²  ⇒  α = ρ n
            est.set_params(alpha=rho * n)
        if "random_state" in params:
            est.set_params(random_state=seed)
        if "max_iter" in params and "epochs" in hparams:
            est.set_params(max_iter=int(hparams["epochs"]))
        est.fit(x, y)
        return FittedSklearn(task=self.task, n_classes=self.n_classes, estimator=est)

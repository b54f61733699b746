"""Victims: a model spec that builds and trains a fresh model per candidate and seed.

Three kinds share one interface (:class:`Victim.fit` → :class:`Fitted`):

* :class:`TorchVictim` — an ``nn.Module`` from the zoo or a user factory, or the module of
  an ART ``PyTorchClassifier`` (re-initialised behind the estimator's preprocessing and input
  shape, retrained with the audit's procedure and the estimator's own optimizer);
  trained with :func:`audit.models.training.train`, or with the user's own training function
  (:class:`UserTraining`, README: "Train as you train").
* :class:`SklearnVictim` — scikit-learn ``LogisticRegression`` / ``Ridge`` / ``Lasso`` /
  ``ElasticNet``, bare or at the end of a ``Pipeline`` of scalers and polynomial features,
  retrained whole with their own solver and, for the first two, attacked through their exact
  torch surrogate (:mod:`audit.models.surrogate`); the L2 strength maps as ``C = 1/(ρ·n)`` (``2/(ρ·n)`` for two classes,
  ``C = inf`` at ρ = 0) and ``alpha = ρ·n`` (ridge loss ½(y − f)²), so both minimise the
  objective (README: How the audit works) (:func:`sklearn_regularization`).

Every fitted victim exports an ART estimator (:meth:`Fitted.to_art`).

The contract is declared, not probed: a victim says what it is (``kind``: ``torch`` or
``sklearn``), the L2 and L1 strengths it trains with for a candidate (:meth:`Victim.l2`,
:meth:`Victim.l1`), its training procedure (:meth:`Victim.train_config`, ``None`` for an
estimator's own solver; :attr:`Victim.procedure` for the run's fingerprint) and whether it
can build fresh torch modules (:meth:`Victim.build`). A fitted victim offers its torch
module or ``None`` (:attr:`Fitted.module`, :meth:`Fitted.require_module`) and a per-model
``cache`` that attacks use to share targets (GradPC, label-flip models) across budgets.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from audit.errors import AuditError
from audit.models.structure import is_convex_linear
from audit.models.training import TrainConfig, TrainResult, data_loss, full_objective_and_grad_norm, loss_kind, train
from audit.seeding import seeded_init

VictimKind = Literal["torch", "sklearn"]

MODEL_AXES = ("width", "depth")
TRAINING_AXES = ("l2", "l1", "epochs", "lr", "batch_size", "momentum")


@dataclass
class Fitted(ABC):
    """A trained victim: predictions, the audit metric, an ART estimator and its torch module (or None).

    Attributes
    ----------
    module : nn.Module or None
        The trained torch module; for a scikit-learn victim its exact torch surrogate
        (:mod:`audit.models.surrogate`), or ``None`` when it has none.
    cache : dict
        Objects derived from this model that attacks share (GradPC targets per ε_w, …).
    """

    task: str
    n_classes: int | None
    train_result: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def require_module(self, who: str) -> nn.Module:
        """The torch module, or a one-line error naming ``who`` needs it."""
        if self.module is None:
            raise AuditError(
                f"{who} needs a PyTorch victim (an nn.Module) or a scikit-learn LogisticRegression / Ridge "
                "(bare or in a supported Pipeline), not this scikit-learn estimator"
            )
        return self.module

    @abstractmethod
    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits/probability scores (n, c) for classification, predictions (n,) for regression."""

    @abstractmethod
    def to_art(self, clip_values: tuple[float, float] | None = None) -> Any:
        """The model as an ART estimator."""

    def query_art(self) -> Any:
        """The model as an ART estimator a black-box attacker queries for per-label scores (:meth:`to_art`)."""
        return self.to_art()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(n,)``, or predictions ``(n,)`` — a regressor's ``(n, 1)`` output flattened (left
        as it was, it broadcast against ``y`` into an ``(n, n)`` difference and a wrong MSE)."""
        s = self.scores(x)
        if self.task == "classification":
            return s.argmax(axis=1)
        s = np.asarray(s)
        if s.ndim > 1 and int(np.prod(s.shape[1:])) != 1:
            raise AuditError(f"a regression model must output one value per point (got shape {s.shape})")
        return s.reshape(len(s))

    def metric(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy in percent (classification) or mean squared error (regression)."""
        pred = self.predict(x)
        if self.task == "classification":
            return float(100.0 * np.mean(pred == y))
        return float(np.mean((pred - y) ** 2))

    def pointwise(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The metric per point, shape (n,): 100 × correct (classification) or the squared error; its mean is :meth:`metric`."""
        pred = self.predict(x)
        if self.task == "classification":
            return 100.0 * (pred == y).astype(np.float64)
        return ((np.asarray(pred, np.float64) - y) ** 2).reshape(-1)

    @abstractmethod
    def class_losses(self, x: np.ndarray) -> np.ndarray:
        """Loss of each point under every possible label, shape (n, c) (classification only)."""


@dataclass
class FittedTorch(Fitted):
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
        # the audit's modules take flat features (n, d) (a user estimator's own input shape is inside its InputSpace)
        flat = (int(np.prod(self.input_shape)),) if self.input_shape else ()
        if self.task == "classification":
            return PyTorchClassifier(
                model=self.module,
                loss=nn.CrossEntropyLoss(),
                input_shape=flat,
                nb_classes=int(self.n_classes or 2),
                clip_values=clip_values,
                device_type=device_type,
            )
        return PyTorchRegressor(model=self.module, loss=nn.MSELoss(), input_shape=flat, device_type=device_type)


@dataclass
class FittedSklearn(Fitted):
    estimator: Any = None

    @property
    def margins(self) -> bool:
        """A classifier with decision values and no probabilities (``LinearSVC``)."""
        return self.task == "classification" and not hasattr(self.estimator, "predict_proba")

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, c), or a margin classifier's decision values (n, c) (two classes: ``[−f, f]``; a class
        the fit never saw: −30), or predictions (n,)."""
        if self.task == "classification":
            classes = self.estimator.classes_.astype(int)
            if self.margins:
                f = np.asarray(self.estimator.decision_function(x), dtype=np.float64)
                values = np.stack([-f, f], axis=1) if f.ndim == 1 else f
                full = np.full((len(x), self.n_classes or values.shape[1]), -30.0)
            else:
                values = self.estimator.predict_proba(x)
                full = np.zeros((len(x), self.n_classes or values.shape[1]))
            full[:, classes] = values
            return full
        return self.estimator.predict(x)

    def class_losses(self, x: np.ndarray) -> np.ndarray:
        """−log p per label, or a margin classifier's one-vs-rest squared hinge per label (its training loss)."""
        s = self.scores(x)
        if not self.margins:
            return -np.log(np.clip(s, 1e-12, None))
        c = s.shape[1]
        t = 2.0 * np.eye(c)[None, :, :] - 1.0  # (1, label, output)
        return (np.clip(1.0 - t * s[:, None, :], 0, None) ** 2).sum(axis=2)

    def query_art(self) -> Any:
        """An ART estimator a black-box attacker queries for per-label scores: :meth:`to_art`, except for a margin
        classifier, which ART answers with one-hot labels only — then its exact surrogate, whose ``predict`` gives the
        decision values (a label's loss grows as its margin falls)."""
        if not self.margins or self.module is None:
            return self.to_art()
        return FittedTorch(task=self.task, n_classes=self.n_classes, module=self.module).to_art()

    def to_art(self, clip_values: tuple[float, float] | None = None) -> Any:
        if self.task == "classification":
            from art.estimators.classification.scikitlearn import SklearnClassifier

            return SklearnClassifier(model=self.estimator, clip_values=clip_values)
        from art.estimators.regression.scikitlearn import ScikitlearnRegressor

        return ScikitlearnRegressor(model=self.estimator, clip_values=clip_values)


class Victim(ABC):
    """Builds and trains a fresh model for a candidate ``hparams`` and a seed."""

    kind: ClassVar[VictimKind]
    task: str
    n_classes: int | None
    description: str

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, hparams: dict[str, Any], seed: int) -> Fitted:
        """Train from scratch on ``(x, y)`` with the candidate's hyperparameters."""

    @abstractmethod
    def train_config(self, hparams: dict[str, Any]) -> TrainConfig | None:
        """The resolved training procedure for a candidate; ``None`` when the estimator's own solver trains it."""

    @property
    @abstractmethod
    def procedure(self) -> dict[str, Any] | None:
        """The training defaults the run resolved (config ← model defaults), for the fingerprint and the report."""

    def l2(self, hparams: dict[str, Any]) -> float:
        """ρ of the objective mean loss + (ρ/2)‖w‖² this victim trains with for ``hparams`` (README: How the audit works)."""
        config = self.train_config(hparams)
        return float(config.l2) if config is not None else float(hparams.get("l2", 0.0))

    def l1(self, hparams: dict[str, Any]) -> float:
        """λ₁ of the L1 term (lasso, elastic net); 0 without one."""
        config = self.train_config(hparams)
        return float(config.l1) if config is not None else float(hparams.get("l1", 0.0))

    def seed_free(self, hparams: dict[str, Any]) -> bool:
        """True when the seed cannot change what :meth:`fit` returns for ``hparams`` (then a grid
        cell whose attack and defense draw nothing random is computed at one seed only)."""
        return False

    @property
    def attack_kinds(self) -> tuple[str, ...]:
        """The victim kinds whose attacks can attack this victim (``AuditAttack.victims``): its own
        kind, and ``torch`` for a scikit-learn model with an exact torch surrogate."""
        return (self.kind,)

    @property
    def caveats(self) -> list[str]:
        """What every output must say about how this victim is attacked (e.g. a surrogate's limits); none by default."""
        return []

    @property
    def builds_modules(self) -> bool:
        """True for torch victims: :meth:`build` gives fresh modules (unrolled attacks, DPA members, τ)."""
        return self.kind == "torch"

    def build(self, hparams: dict[str, Any]) -> nn.Module:
        """An untrained torch module for ``hparams`` (torch victims only)."""
        raise AuditError(f"{self.description} is not a torch model: it cannot build modules")


@dataclass(frozen=True)
class UserTraining:
    """The user's own training, used for every retraining of a torch victim instead of the audit's.

    ``fn(model, x, y, *, seed)`` trains ``model`` (the fresh, seeded module the audit would
    train: the user's module, behind an ART estimator's input shape and preprocessing) in place
    on ``x`` ``(n, d)`` float32 and ``y`` ``(n,)`` (int64 labels or float32 responses), tensors on
    the run's device. When its signature names ``l2`` it also gets the candidate's ρ (the
    objective mean loss + (ρ/2)‖w‖² of docs: its penalty is the user's to apply), when it names
    ``hparams`` the candidate's whole dict. ``name`` (``package.module:function`` or the
    callable's qualified name) identifies it in the fingerprint and the report.
    """

    fn: Callable[..., Any]
    name: str

    def takes(self, argument: str) -> bool:
        import inspect

        try:
            params = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return False
        return argument in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, hparams: dict[str, Any], l2: float, seed: int) -> None:
        extra: dict[str, Any] = {}
        if self.takes("l2"):
            extra["l2"] = l2
        if self.takes("hparams"):
            extra["hparams"] = dict(hparams)
        try:
            self.fn(module, x, y, seed=seed, **extra)
        except AuditError:
            raise
        except Exception as err:  # the user's code: one line, not a traceback
            raise AuditError(f"training.factory: {self.name}(model, x, y, seed=…) raised {type(err).__name__}: {err}") from None


class TorchVictim(Victim):
    """A torch module factory plus the audit's training procedure.

    ``fit`` initialises the module under :func:`audit.seeding.seeded_init`: seeded, and the
    caller's global RNG state is left as it was.

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
        user_training: UserTraining | None = None,
    ) -> None:
        self._build = build
        self.task = task
        self.n_classes = n_classes
        self.input_shape = input_shape
        self.training = training
        self.device = device
        self.description = description
        self.user_training = user_training

    kind: ClassVar[VictimKind] = "torch"

    @property
    def procedure(self) -> dict[str, Any]:
        if self.user_training is None:
            return self.training
        return {**self.training, "train_fn": self.user_training.name}

    def build(self, hparams: dict[str, Any]) -> nn.Module:
        return self._build(hparams)

    def train_config(self, hparams: dict[str, Any]) -> TrainConfig:
        merged = {**self.training, **{k: v for k, v in hparams.items() if k in TRAINING_AXES}}
        return TrainConfig(**{k: v for k, v in merged.items() if v is not None or k == "batch_size"})

    def seed_free(self, hparams: dict[str, Any]) -> bool:
        """A convex linear model (one ``nn.Linear``) trained full batch: its objective has one
        minimiser (ρ > 0) and :meth:`fit` starts it at w = 0, so no seed enters training."""
        if self.user_training is not None or self.train_config(hparams).batch_size is not None:
            return False
        with seeded_init(0):  # building initialises; the caller's generators stay as they were
            return is_convex_linear(self.build(hparams))

    def fit(self, x: np.ndarray, y: np.ndarray, hparams: dict[str, Any], seed: int) -> FittedTorch:
        with seeded_init(seed):
            module = self.build(hparams).to(self.device)
        config = self.train_config(hparams)
        if self.user_training is None and config.batch_size is None and is_convex_linear(module):
            with torch.no_grad():  # convex and full batch: start at w = 0, the seed plays no part
                for p in module.parameters():
                    p.zero_()
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        dtype = torch.long if self.task == "classification" else torch.float32
        yt = torch.as_tensor(y, dtype=dtype, device=self.device)
        if self.user_training is None:
            result: TrainResult = train(module, xt, yt, self.task, config, seed)
        else:
            with seeded_init(seed):  # whatever the user's training draws from the global generators is seeded too
                module.train()
                self.user_training(module, xt, yt, hparams, float(config.l2), seed)
            module.eval()
            final, grad_norm = full_objective_and_grad_norm(module, xt, yt, self.task, float(config.l2))
            # the audit's objective at the user's solution; convergence to it is not the user's contract
            result = TrainResult(0, final, grad_norm, bool(np.isfinite(final)))
        return FittedTorch(
            task=self.task,
            n_classes=self.n_classes,
            train_result=result.as_dict(),
            module=module,
            device=self.device,
            input_shape=self.input_shape,
        )

    def loss(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return data_loss(module(x), y, self.task, kind=loss_kind(module))


def reinitialise(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every sub-module's ``reset_parameters`` called (seeded by the caller)."""
    fresh = copy.deepcopy(module)
    for sub in fresh.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()  # type: ignore[operator]  # torch/numpy stubs
    return fresh


def sklearn_regularization(kind: str, n_classes: int | None, rho: float, l1: float, n: int) -> dict[str, float]:
    """The scikit-learn parameters that give the audit's objective ``mean loss + (ρ/2)‖W‖² (+ λ₁‖w‖₁)`` on ``n`` points.

    The one place ρ maps onto a scikit-learn estimator, per estimator and task:

    * ``LogisticRegression``, c ≥ 3 classes (multinomial, one weight row per class like the
      torch softmax victim): ``C·Σℓ + ½‖W‖²  ⇔  mean ℓ + 1/(2Cn)‖W‖²  ⇒  C = 1/(ρn)``.
    * ``LogisticRegression``, 2 classes: scikit-learn fits one vector ``v``; the torch softmax
      victim's loss depends only on ``v = w₁ − w₀`` and its penalty is smallest at
      ``w₁ = −w₀ = v/2``, i.e. ``(ρ/2)·‖v‖²/2``: binary logistic regression at ρ/2, so
      ``C = 2/(ρn)``. The two victims then have the same decision function.
    * ``SGDClassifier(log_loss)``, 2 classes: ``mean ℓ + (α/2)‖v‖²`` against ``(ρ/4)‖v‖²``  ⇒  ``α = ρ/2``.
    * ``LinearSVC`` (squared hinge, one-vs-rest; liblinear penalises the intercept, so the surrogate's is a weight):
      each output's ``½‖w_k‖² + C·Σ max(0, 1 − t w_k·x̃)²  ⇔  mean ℓ + 1/(2Cn)‖w_k‖²  ⇒  C = 1/(ρn)``, two classes
      too (the torch victim's two rows are ``[−w, w]`` at its optimum, twice the binary objective). ρ > 0.
    * ``Ridge``: ``‖y − Xw‖² + α‖w‖²  ⇔  mean ½(y − f)² + (α/2n)‖w‖²  ⇒  α = ρn``.
    * ``Lasso``: ``(1/2n)‖y − Xw‖² + α‖w‖₁  ⇒  α = λ₁``.
    * ``ElasticNet``: ``α·r‖w‖₁ + ½α(1 − r)‖w‖²  ⇒  α = ρ + λ₁, r = λ₁/(ρ + λ₁)``.
    """
    if kind == "LogisticRegression":
        scale = 2.0 if n_classes == 2 else 1.0
        return {"C": np.inf if rho == 0 else scale / (rho * n)}
    if kind == "SGDClassifier":  # mean log-loss + α/2‖v‖² on one binary vector v: the binary case above, α = ρ/2
        return {"alpha": rho / 2}
    if kind == "LinearSVC":
        if rho <= 0:
            raise AuditError("LinearSVC needs ρ > 0 (C = 1/(ρn); scikit-learn has no C = ∞); give candidates l2 > 0")
        return {"C": 1.0 / (rho * n)}
    if kind == "Lasso":
        return {"alpha": l1}
    if kind == "ElasticNet":
        return {"alpha": rho + l1, "l1_ratio": l1 / (rho + l1) if rho + l1 > 0 else 0.5}
    return {"alpha": rho * n}


_DETERMINISTIC_SOLVERS = ("lbfgs", "newton-cg", "newton-cholesky", "auto", "svd", "cholesky", "lsqr", "sparse_cg")


class SklearnVictim(Victim):
    """A scikit-learn linear estimator, bare or at the end of a ``Pipeline``, refitted whole per
    candidate with its own solver on the raw (clean or poisoned) data.

    With ``surrogate`` (``LogisticRegression`` / ``Ridge`` behind supported transformers,
    :mod:`audit.models.surrogate`) every fit also carries its exact torch surrogate as
    :attr:`Fitted.module`, so the white-box attacks run against it (:attr:`attack_kinds`).
    """

    kind: ClassVar[VictimKind] = "sklearn"

    def __init__(self, estimator: Any, task: str, n_classes: int | None, description: str, surrogate: bool = False) -> None:
        self.estimator = estimator
        self.task = task
        self.n_classes = n_classes
        self.description = description
        self.surrogate = surrogate

    @property
    def attack_kinds(self) -> tuple[str, ...]:
        return ("sklearn", "torch") if self.surrogate else ("sklearn",)

    @property
    def caveats(self) -> list[str]:
        from audit.models.surrogate import final_step, fitted_steps

        out = []
        last = final_step(self.estimator)[1]
        if self.surrogate and type(last).__name__ == "LinearSVC" and last.get_params().get("loss") == "hinge":
            out.append(
                "LinearSVC(loss='hinge'): the white-box attacks differentiate the hinge by its subgradient, and back-gradient "
                "unrolls T steps of (sub)gradient descent (the hinge has no curvature for its implicit form), so their model of "
                "the training is approximate and their damage may be a lower bound of an exact attacker's; every cell's damage "
                "is that of the real refit, and the worst case is over every attack, label flips and StatP included"
            )
        refit = fitted_steps(self.estimator)
        if not self.surrogate or not refit:
            return out
        return out + [
            f"Gradient Canceling and TGDA model the pipeline's {', '.join(refit)} at its clean fit, while every retraining "
            "refits it on the poisoned data, so their damage may be a lower bound of what an attacker that models the refit "
            "would do; back-gradient models the refit exactly (refit_scalers: true, its default: the scalers' statistics "
            "move with the poisons in its hypergradient). Measured on breast_cancer's raw features (ρ = 0.03, ε = 10 %, "
            "3 seeds): modelling the refit, back-gradient does 2.6–4.4 test points (2.6–5.3 with the scaler fixed) and "
            "Gradient Canceling 0.9–2.6 (1.75 fixed; on a churn table below 2.2 against 4.5 fixed, so it keeps the fixed "
            "scaler by default, refit_scalers: true models the refit); on the same data standardised once they do "
            "14.0–14.9 and 14.9–18.4 — the refit itself caps what 10 % of points can do (examples/benchmarks/README.md); "
            "the worst case is over every attack, label flips and StatP included"
        ]

    @property
    def procedure(self) -> None:
        return None

    def train_config(self, hparams: dict[str, Any]) -> None:
        return None

    def seed_free(self, hparams: dict[str, Any]) -> bool:
        """The seed reaches the estimator only as ``random_state``: seed-free without one, or with a
        solver that draws nothing (LogisticRegression's lbfgs/newton-*, Ridge's direct solvers)."""
        from audit.models.surrogate import final_step

        params = final_step(self.estimator)[1].get_params()
        return "random_state" not in params or params.get("solver") in _DETERMINISTIC_SOLVERS

    def fit(self, x: np.ndarray, y: np.ndarray, hparams: dict[str, Any], seed: int) -> FittedSklearn:
        from sklearn.base import clone

        from audit.models.surrogate import final_step, torch_surrogate

        est = clone(self.estimator)
        prefix, last = final_step(est)
        n = len(y)
        params = last.get_params()
        reg = sklearn_regularization(type(last).__name__, self.n_classes, float(hparams.get("l2", 0.0)), float(hparams.get("l1", 0.0)), n)
        est.set_params(**{prefix + k: v for k, v in reg.items()})
        if "random_state" in params:
            est.set_params(**{prefix + "random_state": seed})
        if "max_iter" in params and "epochs" in hparams:
            est.set_params(**{prefix + "max_iter": int(hparams["epochs"])})
        est.fit(x, y)  # the whole pipeline: its transformers refit on these (possibly poisoned) points
        module = torch_surrogate(est, self.n_classes) if self.surrogate else None
        return FittedSklearn(task=self.task, n_classes=self.n_classes, estimator=est, module=module)

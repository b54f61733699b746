"""The ``poison-audit threshold`` use case: train the clean model, build or load a target, compute τ."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import BUILTIN, load_dataset
from audit.errors import AuditError
from audit.maths.poisonability import gradpc, module_metric, thresholds
from audit.models import build_victim, resolve_device
from audit.seeding import derive_seed


def dataset_spec_for(dataset: str, label_column: str | None) -> DatasetSpec:
    """``--dataset``: a built-in name, or the path of the user's data — ``.npz``, ``.csv`` (with
    ``--label-column``) or an image folder — checked with the config's one-line errors."""
    if dataset in BUILTIN:
        return DatasetSpec(name=dataset)
    path = Path(dataset).expanduser()
    if path.is_dir():
        return DatasetSpec(name="image_folder", path=str(path))
    if path.suffix.lower() == ".npz":
        return DatasetSpec(name="npz", path=str(path))
    if path.suffix.lower() == ".csv":
        if not label_column:
            raise AuditError("--dataset: a .csv needs --label-column (the column holding the labels)")
        return DatasetSpec(name="csv", path=str(path), label_column=label_column)
    raise AuditError(f"--dataset: unknown dataset {dataset!r}; valid: {', '.join(sorted(BUILTIN))}, or a .npz, a .csv or an image folder")


def compute_threshold_report(
    dataset_name: str,
    model_name: str,
    l2: float,
    width: int | None,
    seed: int,
    target_file: Any,
    eps_w: float | None,
    save_target: Any,
    *,
    dataset_spec: DatasetSpec | None = None,
    model_spec: ModelSpec | None = None,
    training: TrainingSpec | None = None,
) -> dict[str, Any]:
    """Train the clean model, build or load the target and compute τ (``poison-audit threshold``).

    Keys of the returned dict (also the ``--json`` output): dataset, model, l2, seed, target
    (description), clean_val, clean_test, target_val, target_test, gradpc (GradPC ascent
    record or null), saved_target (path or null), threshold (a, w_norm_sq, kappa_2, kappa_c,
    n_classes, tau_2, tau_c, tau_rho_2, tau_rho_c — null means unreachable at any budget —
    eps_upper_2, unreachable, condition, loss, l2).
    """

    if dataset_spec is None and dataset_name not in BUILTIN:
        raise AuditError(f"--dataset: unknown dataset {dataset_name!r}; valid: {', '.join(sorted(BUILTIN))}")
    if model_spec is None and model_name not in ("logreg", "mlp", "cnn", "ridge"):
        raise AuditError(f"--model: expected one of cnn, logreg, mlp, ridge (got {model_name!r})")
    data = load_dataset(dataset_spec or DatasetSpec(name=dataset_name))
    device = resolve_device("auto")
    victim = build_victim(model_spec or ModelSpec(name=model_name, width=width), training or TrainingSpec(), data, device)
    fitted = victim.fit(data.x_train, data.y_train, {"l2": l2}, derive_seed(seed, "train"))
    clean = fitted.require_module("poison-audit threshold")
    record = None
    if target_file is not None:
        path = Path(target_file)
        if not path.is_file():
            raise AuditError(f"--target: file not found: {path}")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 — any unreadable file is the user's input
            raise AuditError(f"--target: cannot load {path} as a state dict ({str(err).splitlines()[0]})") from None
        if not isinstance(state, dict):
            raise AuditError(f"--target: {path} holds a {type(state).__name__}, not a state dict (torch.save(model.state_dict(), path))")
        target = copy.deepcopy(clean)
        expected = target.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        shapes = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
        ]
        if missing or unexpected or shapes:
            parts = [
                f"missing keys {missing}" if missing else "",
                f"unexpected keys {unexpected}" if unexpected else "",
                f"shapes differ: {'; '.join(shapes)}" if shapes else "",
            ]
            raise AuditError(f"--target: cannot load {path} as a state dict of {model_name}: {', '.join(p for p in parts if p)}")
        target.load_state_dict(state)
        description = f"state dict {path}"
    else:
        assert eps_w is not None, "the CLI asks for --target or --eps-w"
        target, result = gradpc(clean, data.x_val, data.y_val, data.task, float(eps_w))
        record = asdict(result)
        description = f"GradPC, ε_w = {eps_w:g} (validation loss {result.val_loss_clean:.4g} → {result.val_loss_target:.4g})"
    saved = None
    if save_target is not None:
        torch.save(target.state_dict(), save_target)
        saved = str(save_target)
    th = thresholds(target, data.x_train, data.y_train, data.task, l2, data.n_classes)
    return {
        "dataset": dataset_name,
        "model": model_name,
        "l2": l2,
        "seed": seed,
        "target": description,
        "clean_val": fitted.metric(data.x_val, data.y_val),
        "clean_test": fitted.metric(data.x_test, data.y_test),
        "target_val": module_metric(target, data.x_val, data.y_val, data.task),
        "target_test": module_metric(target, data.x_test, data.y_test, data.task),
        "gradpc": record,
        "saved_target": saved,
        "threshold": th.as_dict(),
    }

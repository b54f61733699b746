"""The GPU suite (issue 20): each attack at the papers' settings on paper-size data, one cell each.

    python examples/benchmarks/gpu_suite.py                                  # every part, on CUDA
    python examples/benchmarks/gpu_suite.py --parts tgda_logreg back_gradient_logreg gc_logreg
    python examples/benchmarks/gpu_suite.py --smoke                          # tiny sizes, CPU: CI keeps it alive

A part is one grid cell as the audit runs it — the clean model trained with the victim's own
procedure, the attack at the paper's settings (the ``paper`` profile's, or the issue's
targets where they name one), the retraining on D_tr ∪ D_p — on ``mnist60k_synthetic`` (full
MNIST's 60 000 × 784; SYNTHETIC: times and memory carry over, accuracies and damage do not),
seed 0, ρ = 1e-3 (logistic regression) or 1e-4 (networks). ``default_audit_paper`` is the whole
default audit (mnist5k, five candidates) at ``profile: paper`` on the device.

Printed and written to ``--out`` (JSON, rewritten after every part, so a run cut short keeps
what finished): per part the attack's and the retraining's seconds, peak GPU memory
(``torch.cuda.max_memory_allocated``), the test-accuracy drop, and the device name. The
targets on one H100/H200: TGDA logistic regression, 200 epochs, ≤ 3 min; back-gradient logistic
regression (T = 150, 100 iterations, 3 % poisons) ≤ 10 min; TGDA against the 784-wide MLP ≤ 30 min.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.attacks import AttackContext
from audit.config import AuditConfig, DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.grid.work import clean_train_seed
from audit.models import build_victim, resolve_device

#: part → (model, width, attack, the attack's parameters over the paper profile's, ε, target seconds or None)
PARTS: dict[str, tuple[str, int | None, str, dict[str, Any], float, float | None]] = {
    "tgda_logreg": ("logreg", None, "tgda", {}, 0.03, 180.0),
    "back_gradient_logreg": (
        "logreg",
        None,
        "back_gradient",
        {"hypergradient": "unrolled", "step_rule": "paper", "iterations": 100, "inner_steps": 150},
        0.03,
        600.0,
    ),  # fmt: skip
    "back_gradient_logreg_implicit": ("logreg", None, "back_gradient", {}, 0.03, None),  # the paper profile's own (implicit, line search)
    "gc_logreg": ("logreg", None, "gradient_canceling", {}, 0.03, None),
    "tgda_mlp": ("mlp", 784, "tgda", {}, 0.03, 1800.0),
    "back_gradient_mlp": ("mlp", 784, "back_gradient", {"iterations": 20}, 0.03, None),
    "tgda_cnn": ("cnn", None, "tgda", {}, 0.03, None),
    "back_gradient_cnn": ("cnn", None, "back_gradient", {"iterations": 10}, 0.03, None),
    "default_audit_paper": ("", None, "", {}, 0.0, None),
}

#: --smoke: the networks' widths, and the attacks' settings, at sizes a 2-core CPU runs in seconds
SMOKE_WIDTH = {"mlp": 16, "cnn": 2}
SMOKE_PARAMS = {"tgda": {"epochs": 1, "pretrain_epochs": 1, "cg_max_iter": 4, "batch_size": 200},
                "back_gradient": {"iterations": 1, "inner_steps": 5, "starts": ["validation"]},
                "gradient_canceling": {"epochs": 3}}  # fmt: skip


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"


def run_cell(part: str, data: Any, device: torch.device, smoke: bool) -> dict[str, Any]:
    """One part's cell; its row of the suite's JSON."""
    model, width, attack_name, params, eps, target = PARTS[part]
    if smoke and model in SMOKE_WIDTH:
        width = SMOKE_WIDTH[model]
    training = TrainingSpec(epochs=2) if smoke and model != "logreg" else TrainingSpec(epochs=30) if smoke else TrainingSpec()
    victim = build_victim(ModelSpec(name=model, width=width), training, data, device)
    hp = {"l2": 1e-3 if model == "logreg" else 1e-4}
    spec = next(s for s in AuditConfig(profile="paper", model=ModelSpec(name=model, width=width)).resolved(data.task, "torch").attacks
                if s.attack.name == attack_name)  # fmt: skip
    params = {**spec.params, **params, **(SMOKE_PARAMS.get(attack_name, {}) if smoke else {})}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    clean = victim.fit(data.x_train, data.y_train, hp, clean_train_seed(0))
    clean_seconds = time.perf_counter() - t0
    ctx = AttackContext.of(data, victim, clean, hp, eps, 0)
    t0 = time.perf_counter()
    x_p, y_p = spec.attack.for_cell(params, ctx).poison(data.x_train, data.y_train)
    attack_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    poisoned = victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), hp, clean_train_seed(0))
    retrain_seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    base = clean.metric(data.x_test, data.y_test)
    return {"part": part, "model": model if width is None else f"{model} (width {width})", "attack": attack_name, "params": params,
            "budget": eps, "n_train": len(data.y_train), "clean_seconds": round(clean_seconds, 2), "attack_seconds": round(attack_seconds, 2),
            "retrain_seconds": round(retrain_seconds, 2), "peak_gpu_gib": None if peak is None else round(peak, 3),
            "clean_test": round(base, 2), "drop": round(base - poisoned.metric(data.x_test, data.y_test), 2), "target_seconds": target,
            "meets_target": None if target is None or smoke else attack_seconds <= target}  # fmt: skip


def run_default_audit(device: torch.device, out_dir: Path, smoke: bool) -> dict[str, Any]:
    """The default audit at ``profile: paper`` on the device (``--smoke``: one candidate, label flips, quick)."""
    from audit.grid.runner import run_audit
    from audit.report.analysis import analyse

    if smoke:
        cfg = AuditConfig(name="gpu-suite-default", profile="quick", device=device.type, candidates={"l2": [1e-2]}, budgets=[0.03], seeds=[0],
                          dataset=DatasetSpec(name="mnist5k", n_samples=400), attacks=[{"name": "label_flip"}])  # fmt: skip
    else:
        cfg = AuditConfig(name="gpu-suite-default-paper", profile="paper", device=device.type)
    t0 = time.perf_counter()
    run_dir = run_audit(cfg, output_dir=out_dir, progress=not smoke)
    seconds = time.perf_counter() - t0
    done = analyse(run_dir).completeness()
    return {"part": "default_audit_paper", "cells": done.planned, "failed": done.failed, "seconds": round(seconds, 1),
            "seconds_per_cell": round(seconds / max(done.planned, 1), 2), "run_dir": str(run_dir)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: every code path runs, nothing is measured")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/gpu_suite.json"))
    args = parser.parse_args()
    device = resolve_device(args.device or ("cpu" if args.smoke else "cuda"))
    out: dict[str, Any] = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "smoke": args.smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "data": "mnist5k (smoke)" if args.smoke else "mnist60k_synthetic (SYNTHETIC, full MNIST's size)", "parts": []}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = None
    print(f"gpu suite on {out['device_name']} ({device}), torch {torch.__version__}", flush=True)
    for part in args.parts:
        t0 = time.perf_counter()
        try:
            if part == "default_audit_paper":
                row = run_default_audit(device, args.out.parent / "gpu_suite_runs", args.smoke)
            else:
                if data is None:
                    data = load_dataset(DatasetSpec(name="mnist5k" if args.smoke else "mnist60k_synthetic"))
                    if args.smoke:
                        data = dataclasses.replace(data, x_train=data.x_train[:300], y_train=data.y_train[:300])
                row = run_cell(part, data, device, args.smoke)
        except Exception as err:  # noqa: BLE001 - one part failing must not lose the others' figures
            row = {"part": part, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        out["parts"].append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(out, indent=1))
    failed = [r["part"] for r in out["parts"] if "error" in r]
    if failed:
        raise SystemExit(f"gpu suite: {len(failed)} part(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

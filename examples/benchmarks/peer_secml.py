"""Back-gradient against SecML 0.15.6's logistic-regression poisoning, side by side (issue 21).

    python examples/benchmarks/peer_secml.py --secml-python /path/to/secml-env/bin/python
    python examples/benchmarks/peer_secml.py --secml-python ... --tasks mnist08 --seeds 0 1 2 --budgets 0.05 0.1 0.2
    python examples/benchmarks/peer_secml.py --step table          # the table from what is on disk

SecML needs Python < 3.11 and numpy < 2, so it lives in its own environment and never becomes a
dependency of the package (``python3.10 -m venv V && V/bin/pip install "secml==0.15.6" "numpy<2"``).
The two sides exchange only ``.npz`` files under ``--out`` (default ``reports/peer_secml``):

1. ``split``: the audit's loader writes each (task, seed)'s train / validation / test split —
   ``mnist08``: mnist5k '0' vs '8', the paper's 512 / 171 / 317 (carnerero-cano-2021);
   ``breast_cancer``: 341 / 114 / 114, min-max scaled on the training split. Box [0, 1].
2. ``secml``: this file run by SecML's interpreter (``--worker``, numpy and secml only) crafts
   ``round(ε·n)`` poisons with ``CAttackPoisoningLogisticRegression`` against its
   ``CClassifierLogistic(C)`` trained on the split, ``distance`` l1 (its default) and l2, the
   solver settings of SecML's MNIST poisoning tutorial (pgd-ls, η = 0.25, η_min = 2, 100
   iterations, eps 1e-6), random flipped training points as its initialisation, ``random_seed``
   = the seed. One thread (OMP/MKL/OpenBLAS = 1).
3. ``audit``: the audit's back-gradient with its defaults (implicit hypergradients for this
   convex victim, line search), one torch thread, against softmax logistic regression with the
   same regularisation (sklearn's ``C Σ loss + ½‖v‖²`` is the audit's mean loss + (ρ/2)‖W‖²
   with ρ = 2 / (C·N) for a two-output softmax, N = n + m).
4. ``table``: every poison set is retrained with one common learner, scikit-learn's
   ``LogisticRegression(C, lbfgs)``; the damage is its test-error increase over the clean
   model, mean ± standard deviation over seeds; craft time is wall time of the attack alone.

Every step skips what is already on disk (rerun to resume). The table goes to stdout,
``table.md`` and ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TASKS = {"mnist08": {"name": "mnist5k", "classes": [0, 8], "split": {"val": 171, "test": 317}},
         "breast_cancer": {"name": "breast_cancer", "split": {"val": 114, "test": 114}}}  # fmt: skip
SECML_SOLVER = {"eta": 0.25, "eta_min": 2.0, "eta_max": None, "max_iter": 100, "eps": 1e-6}
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
C = 1.0  # scikit-learn's default, for SecML's learner and the common one


def n_poison(budget: float, n: int) -> int:
    return max(1, int(round(budget * n)))


# --------------------------------------------------------------------------- 1. splits
def write_split(task: str, seed: int, path: Path) -> None:
    from audit.data import DatasetSpec, load_dataset

    spec = TASKS[task]
    data = load_dataset(DatasetSpec(**{**spec, "split": {**spec["split"], "seed": seed}}))  # type: ignore[arg-type]
    np.savez(path, x_tr=data.x_train, y_tr=data.y_train, x_val=data.x_val, y_val=data.y_val, x_te=data.x_test, y_te=data.y_test)


# --------------------------------------------------------------------------- 2. SecML (its own interpreter)
def secml_worker(split: Path, budget: float, distance: str, seed: int, out: Path) -> None:
    """Runs under SecML's Python: numpy and secml only."""
    import warnings

    warnings.simplefilter("ignore")  # scikit-learn's FutureWarning on every one of SecML's refits
    from secml.adv.attacks.poisoning import CAttackPoisoningLogisticRegression
    from secml.array import CArray
    from secml.data import CDataset
    from secml.ml.classifiers import CClassifierLogistic

    s = np.load(split)
    tr = CDataset(CArray(s["x_tr"].astype(float)), CArray(s["y_tr"].astype(int)))
    val = CDataset(CArray(s["x_val"].astype(float)), CArray(s["y_val"].astype(int)))
    clf = CClassifierLogistic(C=C)
    clf.fit(tr.X, tr.Y)
    attack = CAttackPoisoningLogisticRegression(classifier=clf, training_data=tr, val=val, distance=distance, lb=0, ub=1,
                                                solver_params=dict(SECML_SOLVER), random_seed=seed)  # fmt: skip
    attack.n_points = n_poison(budget, tr.num_samples)
    start = time.perf_counter()
    _, _, pois, _ = attack.run(CArray(s["x_te"].astype(float)), CArray(s["y_te"].astype(int)))
    seconds = time.perf_counter() - start
    np.savez(out, x=pois.X.tondarray(), y=pois.Y.tondarray(), seconds=seconds)


# --------------------------------------------------------------------------- 3. the audit
def audit_craft(split: Path, budget: float, seed: int, out: Path, params: dict | None = None) -> None:
    import torch

    from audit.attacks import BackGradient
    from audit.models.zoo import LogReg

    torch.set_num_threads(1)
    s = np.load(split)
    x, y = s["x_tr"].astype(np.float32), s["y_tr"]
    m = n_poison(budget, len(y))
    rho = 2.0 / (C * (len(y) + m))
    module = LogReg(x.shape[1], 2)
    start = time.perf_counter()
    attack = BackGradient(module, x_val=s["x_val"].astype(np.float32), y_val=s["y_val"], budget=budget, task="classification",
                          n_classes=2, l2=rho, box=(np.zeros(x.shape[1]), np.ones(x.shape[1])), seed=seed, **(params or {}))  # fmt: skip
    x_p, y_p = attack.poison(x, y)
    seconds = time.perf_counter() - start
    np.savez(out, x=x_p, y=y_p, seconds=seconds)


# --------------------------------------------------------------------------- 4. the table
def common_error(s: np.lib.npyio.NpzFile, x_p: np.ndarray | None = None, y_p: np.ndarray | None = None) -> float:
    """Test error (%) of scikit-learn's LogisticRegression(C, lbfgs) on train ∪ poisons."""
    from sklearn.linear_model import LogisticRegression

    x, y = s["x_tr"], s["y_tr"]
    if x_p is not None:
        x, y = np.concatenate([x, x_p]), np.concatenate([y, y_p])
    clf = LogisticRegression(C=C, max_iter=5000).fit(x, y)
    return 100.0 * float((clf.predict(s["x_te"]) != s["y_te"]).mean())


def table(out: Path, tasks: list[str], seeds: list[int], budgets: list[float], methods: list[str]) -> dict:
    results: dict = {}
    lines = []
    for task in tasks:
        rows = {}
        for method in methods:
            row = {}
            for b in budgets:
                damage, seconds = [], []
                for seed in seeds:
                    split, file = out / f"split-{task}-{seed}.npz", out / f"{method}-{task}-s{seed}-{b:g}.npz"
                    if not (split.exists() and file.exists()):
                        continue
                    s, p = np.load(split), np.load(file)
                    damage.append(common_error(s, p["x"], p["y"]) - common_error(s))
                    seconds.append(float(p["seconds"]))
                row[f"{b:g}"] = {"damage": damage, "seconds": seconds}
            rows[method] = row
        results[task] = rows
        lines += [f"\n{task} (C = {C:g}, common learner: scikit-learn LogisticRegression lbfgs)\n",
                  "| | " + " | ".join(f"{b:.0%}" for b in budgets) + " |", "| --- |" + " --- |" * len(budgets)]  # fmt: skip
        for method in methods:
            cells_t, cells_d = [], []
            for b in budgets:
                r = rows[method][f"{b:g}"]
                k = len(r["damage"])
                cells_t.append(f"{np.mean(r['seconds']):.1f} s" if k else "—")
                cells_d.append(f"+{np.mean(r['damage']):.1f} ± {np.std(r['damage']):.1f} ({k})" if k else "—")
            lines.append(f"| {method}: craft time | " + " | ".join(cells_t) + " |")
            lines.append(f"| {method}: test-error increase (seeds) | " + " | ".join(cells_d) + " |")
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secml-python", default=None, help="SecML's interpreter (its own environment)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--distances", nargs="+", default=["l1", "l2"])
    parser.add_argument("--step", choices=["all", "split", "secml", "audit", "table"], default="all")
    parser.add_argument("--audit-params", default="{}", help="JSON: back-gradient params for the audit's side")
    parser.add_argument("--audit-name", default="audit", help="file prefix of the audit's poisons (to compare settings)")
    parser.add_argument("--out", default=str(REPO / "reports" / "peer_secml"))
    parser.add_argument("--worker", nargs=5, metavar=("SPLIT", "BUDGET", "DISTANCE", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        split, budget, distance, seed, out_file = args.worker
        secml_worker(Path(split), float(budget), distance, int(seed), Path(out_file))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = ["split", "secml", "audit", "table"] if args.step == "all" else [args.step]
    for seed in args.seeds:  # seed-major: every finished seed is a complete row of the table
        for task in args.tasks:
            split = out / f"split-{task}-{seed}.npz"
            if "split" in steps and not split.exists():
                write_split(task, seed, split)
            for b in args.budgets:
                if "audit" in steps:
                    file = out / f"{args.audit_name}-{task}-s{seed}-{b:g}.npz"
                    if not file.exists():
                        audit_craft(split, b, seed, file, json.loads(args.audit_params))
                        print(f"{file.name}: {float(np.load(file)['seconds']):.1f} s", flush=True)
                if "secml" in steps:
                    if not args.secml_python:
                        parser.error("--secml-python is needed for the SecML step")
                    for distance in args.distances:
                        file = out / f"secml_{distance}-{task}-s{seed}-{b:g}.npz"
                        if not file.exists():
                            env = {**os.environ, **ONE_THREAD, "PYTHONPATH": ""}
                            subprocess.run([args.secml_python, __file__, "--worker", str(split), str(b), distance, str(seed), str(file)],
                                           check=True, env=env)  # fmt: skip
                            print(f"{file.name}: {float(np.load(file)['seconds']):.1f} s", flush=True)
    if "table" in steps:
        methods = [args.audit_name] + [f"secml_{d}" for d in args.distances]
        table(out, args.tasks, args.seeds, args.budgets, methods)


if __name__ == "__main__":
    sys.exit(main())

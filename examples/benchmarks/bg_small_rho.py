"""The quick profile's implicit back-gradient at a small ρ: time and strength of variants (issue 30, speed).

mnist5k softmax regression, one candidate ρ (default 1e-4: the ill-conditioned cells that are half of the default
audit's screen), ε = 3 / 10 / 30 % in order (each warm-started from the smaller budget's poisons, as the grid does),
seed 0, attacker's own split. Each variant replaces keys of the profile's (``--profile``, default quick) ``implicit``
block; the key ``"dense": true`` (not a parameter) turns off the sparse products of mostly-zero inputs
(:class:`audit.maths.implicit.SparseRows`), to time the two against each other. Printed per cell: test accuracy drop,
the attacker's objective at the returned poisons, seconds, retrainings.

    OMP_NUM_THREADS=2 python examples/benchmarks/bg_small_rho.py --rho 1e-4 --variants '{"quick": {}, "cg50": {"cg_max_iter": 50}}'
    OMP_NUM_THREADS=2 python examples/benchmarks/bg_small_rho.py --profile paper --rho 1e-2 --budgets 0.1 \
        --variants '{"sparse": {}, "dense": {"dense": true}}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from audit.attacks.back_gradient import BackGradient
from audit.catalog import PROFILE_NAMES
from audit.config import parse_config
from audit.grid.cells import GridCell
from audit.grid.runner import plan_audit
from audit.grid.work import clean_unit, craft_unit, defense_unit
from audit.maths.implicit import SparseRows
from audit.threads import configure_threads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rho", type=float, default=1e-4)
    parser.add_argument("--variants", default='{"quick": {}, "cg50": {"cg_max_iter": 50}}')
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="quick")
    args = parser.parse_args()
    configure_threads(args.threads)
    spec = BackGradient.profiles.get(args.profile)
    base = json.loads(json.dumps(dict(spec.params))) if spec is not None else {}
    base.setdefault("implicit", {})
    sparse_rows = SparseRows.of
    for name, extra in json.loads(args.variants).items():
        SparseRows.of = (lambda phi, max_density=0.5: None) if extra.pop("dense", False) else sparse_rows  # type: ignore[method-assign]
        params = {**base, "implicit": {**base["implicit"], **extra}}
        cfg = {"name": "bg-small-rho", "dataset": {"name": "mnist5k"}, "model": {"name": "logreg"}, "candidates": {"l2": [args.rho]},
               "budgets": args.budgets, "seeds": [0], "device": "cpu", "confirm": False, "splits": 1, "profile": args.profile,
               "attacks": [{"name": "back_gradient", "id": "bg", "params": params}]}  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            plan = plan_audit(parse_config(cfg), output_dir=out)
            candidate = plan.candidate(json.dumps({"l2": args.rho}))
            clean = clean_unit(plan, candidate, 0)
            warm = None
            for eps in args.budgets:
                start = time.perf_counter()
                poisons = craft_unit(plan, clean, "bg", eps, warm)
                seconds = time.perf_counter() - start
                assert poisons.failure is None, poisons.failure
                warm = poisons
                cell = defense_unit(plan, clean, GridCell(0, candidate, "bg", eps, "none", 0), poisons)
                assert cell.clean_test is not None and cell.poisoned_test is not None
                print(json.dumps({"variant": name, "profile": args.profile, "rho": args.rho, "eps": eps, "drop": round(cell.clean_test - cell.poisoned_test, 2),
                                  "objective": round(poisons.diagnostics["objective_final"], 4), "seconds": round(seconds, 1),
                                  "retrainings": poisons.diagnostics.get("evaluations")}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

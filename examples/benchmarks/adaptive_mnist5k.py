"""The adaptive stage (issue 15): every filtering defense against attackers that know it.

    OMP_NUM_THREADS=2 python examples/benchmarks/adaptive_mnist5k.py [--task ten|17|both] [--profile quick] [--defenses none ...]

Two audits exactly as ``poison-audit run`` runs them (the profile's battery, one candidate
ρ = 1e-3, ε ∈ {3 %, 10 %}, seed 0), each twice: with ``adaptive: {enabled: off}`` and with the
adaptive stage on, so the stage's own cost is the difference of the two wall times:

* ``ten``: mnist5k, ten classes (3000 training points), logistic regression;
* ``17``: MNIST '1' vs '7' from mnist5k (Steinhardt et al. 2017's task), where min-max and its
  certified bound join the adaptive attackers.

Defenses: none, the loss filter, Sever, sphere, slab and sphere + slab (oracle centroids). For
each filtering defense and budget: the worst non-adaptive and adaptive test drop (points), the
share of poisons that survived the filter, the clean points removed, the verdict; for '1' vs '7'
the bracket (worst clean training loss found, certified bound U*). Writes
reports/benchmarks/adaptive_mnist5k_<task>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from audit.config import parse_config
from audit.grid import run_audit
from audit.report import analyse, write_report

DEFENSES = ["none", "loss_filter", "sever", "sphere", "slab", "sphere_slab"]


def config(task: str, profile: str, adaptive: bool, defenses: list[str] = DEFENSES) -> dict:
    dataset = {"name": "mnist5k"} if task == "ten" else {"name": "mnist5k", "classes": [1, 7]}
    return {
        "name": f"adaptive-{task}-{profile}-{'on' if adaptive else 'off'}" + ("" if defenses == DEFENSES else "-" + "-".join(defenses)),
        "dataset": dataset,
        "model": {"name": "logreg"},
        "candidates": {"l2": [1e-3]},
        "profile": profile,
        "budgets": [0.03, 0.1],
        "seeds": [0],
        "defenses": defenses,
        "device": "cpu",
        "adaptive": {"enabled": "auto" if adaptive else "off"},
    }


def box_bracket(run_dir: Path, task: str, budgets: list[float], rounds: int = 300) -> dict:
    """The bracket in the feature box for ten classes, where the audit leaves min-max out (c(c − 1)
    margins a round; in the box each is a closed-form corner, so this costs seconds): U* of a
    min-max run with ``rounds`` descent rounds against the worst clean objective any cell of the
    run reached with no defense."""
    from audit.attacks import AttackContext, MinMax
    from audit.config import DatasetSpec, ModelSpec, TrainingSpec
    from audit.data import load_dataset
    from audit.models import build_victim

    data = load_dataset(DatasetSpec(name="mnist5k", classes=None if task == "ten" else [1, 7]))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
    hp = {"l2": 1e-3}
    clean = victim.fit(data.x_train, data.y_train, hp, 0)
    cells = [c for c in analyse(run_dir).cells if c.status == "ok" and c.defense == "none"]
    out = {}
    for eps in budgets:
        attack = MinMax.for_cell({"defense": "none", "bound_rounds": rounds}, AttackContext.of(data, victim, clean, hp, eps, 0))
        start = time.perf_counter()
        attack.poison(data.x_train, data.y_train)
        found = {c.attack: json.loads(c.diagnostics or "{}").get("clean_objective") for c in cells if c.budget == eps}
        worst = max((k for k in found if found[k] is not None), key=lambda k: found[k])
        out[str(eps)] = {"bound": attack.diagnostics.bound, "found": found[worst], "by": worst, "seconds": time.perf_counter() - start}
    return out


def run(task: str, profile: str, out: Path, reuse: bool = False, defenses: list[str] = DEFENSES) -> dict:
    times, runs = {}, {}
    previous = out / f"adaptive_mnist5k_{task}.json"
    for adaptive in (False, True):
        cfg = parse_config(config(task, profile, adaptive, defenses))
        if reuse and previous.is_file():  # the stored runs and their measured times
            runs[adaptive] = out / cfg.name
            times[adaptive] = json.loads(previous.read_text())["seconds_on" if adaptive else "seconds_off"]
            continue
        start = time.perf_counter()
        run_dir = run_audit(cfg, output_dir=out, restart=True, progress=False)
        times[adaptive] = time.perf_counter() - start
        write_report(run_dir)
        runs[adaptive] = run_dir
    summary = json.loads((runs[True] / "summary.json").read_text())
    a = analyse(runs[True])
    adaptive_seconds = sum(c.seconds or 0.0 for c in a.cells if c.attack.endswith("~adaptive"))
    return {
        "task": task,
        "profile": profile,
        "n_train": summary["dataset"]["n_train"],
        "seconds_off": times[False],
        "seconds_on": times[True],
        "adaptive_cell_seconds": adaptive_seconds,
        "attackers": summary["adaptive"]["attackers"],
        "rows": summary["adaptive"]["defenses"],
        "bracket": summary["adaptive"]["bracket"],
        "recommendation": summary["recommendation"]["reason"],
        "threads": torch.get_num_threads(),
        "box_bracket": box_bracket(runs[True], task, [0.03, 0.1]) if task == "ten" and "none" in defenses else None,
    }


def table(result: dict) -> str:
    lines = [f"### {result['task']} ({result['n_train']} training points), profile {result['profile']}, {result['threads']} threads",
             f"wall: {result['seconds_off']:.0f} s without the adaptive stage, {result['seconds_on']:.0f} s with it "
             f"(× {result['seconds_on'] / result['seconds_off']:.2f}; adaptive cells {result['adaptive_cell_seconds']:.0f} s); "
             f"attackers {', '.join(result['attackers'])}", "",
             "| defense | ε | non-adaptive drop | by | survived | adaptive drop | by | survived | clean removed | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in result["rows"]:
        nan = float("nan")
        p, q = r["non_adaptive"] or {}, r["adaptive"] or {}
        lines.append(f"| {r['defense']} | {100 * r['budget']:g} % | {p.get('damage', nan):.2f} | {r['non_adaptive_attack']} | "
                     f"{100 * p.get('poisons_survived', nan):.0f} % | {q.get('damage', nan):.2f} | {r['adaptive_attack']} | "
                     f"{100 * q.get('poisons_survived', nan):.0f} % | {q.get('clean_removed', nan):.0f} | {r['verdict']} |")  # fmt: skip
    if result.get("box_bracket"):
        lines += ["", "bracket in the feature box (min-max with 300 descent rounds, run beside the audit):", "",
                  "| ε | worst clean loss found (no defense) | by | U* | min-max s |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for eps, b in result["box_bracket"].items():
            lines.append(f"| {100 * float(eps):g} % | {b['found']:.4f} | {b['by']} | {b['bound']:.4f} | {b['seconds']:.0f} |")
    if result["bracket"]:
        lines += ["", f"bracket (clean model {result['bracket']['clean']:.4f}):", "", "| defense | ε | worst loss found | by | U* |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for d, s in result["bracket"]["defenses"].items():
            for eps, found in s["worst_found"].items():
                bound = s["bound"].get(eps, float("nan"))
                lines.append(f"| {d} | {100 * float(eps):g} % | {found:.4f} | {s['attack'].get(eps)} | {bound:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["ten", "17", "both"], default="both")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--reuse", action="store_true", help="read the stored runs instead of running the audits again")
    parser.add_argument("--defenses", nargs="+", default=DEFENSES, help="the defense axis (keep 'none': the verdicts compare with it)")
    args = parser.parse_args()
    out = Path("reports/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    results = [run(t, args.profile, out, args.reuse, args.defenses) for t in (["17", "ten"] if args.task == "both" else [args.task])]
    suffix = "" if args.defenses == DEFENSES else "_" + "_".join(args.defenses)
    for r in results:
        (out / f"adaptive_mnist5k_{r['task']}{suffix}.json").write_text(json.dumps(r, indent=1))
        print(table(r), "\n")
        print(r["recommendation"], "\n")


if __name__ == "__main__":
    main()

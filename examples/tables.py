"""Audit a model on a table: a pandas DataFrame with integer, binary and text columns and text labels.

    python examples/tables.py [--out reports] [--threads 2] [--model logreg|pipeline] [--domain auto|relaxed] [--refine on|off]

The table is synthetic (customer churn: tenure, monthly charge, senior, contract, payment →
"churn" / "stay"). The audit one-hot encodes the text columns, keeps the class names, infers
each column's domain and keeps every poison inside it; the script checks that, then prints
what the report says of the domain. ``--model pipeline`` audits the model as a scikit-learn user ships it instead:
``ColumnTransformer(StandardScaler on the numbers, OneHotEncoder on the text) → LogisticRegression``, fitted by the
user on the training rows with text labels and handed over fitted (README: "Tables", "A pipeline that reads the table").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

import audit
from audit.config import parse_config
from audit.grid.store import Store
from audit.report import write_report
from audit.threads import configure_threads


def churn_table(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "tenure": rng.integers(0, 72, n), "monthly": rng.normal(70, 20, n).round(2), "senior": rng.integers(0, 2, n),
        "contract": rng.choice(["month", "year", "two-year"], n), "payment": rng.choice(["card", "check", "transfer", "cash"], n),
    })  # fmt: skip
    logit = -1 + 0.04 * (40 - df.tenure) + 0.02 * (df.monthly - 70) + 1.2 * (df.contract == "month") + 0.5 * df.senior
    df["churn"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "churn", "stay")
    return df


def shipped_pipeline(df: pd.DataFrame, rho: float) -> object:
    """The user's model: numbers standardised, text one-hot, logistic regression at C = 2/(ρn) (the audit's ρ), fitted
    on the rows of the table the audit trains on (its default split) with the text labels."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from audit.data import split_indices

    train = df.iloc[split_indices(len(df), 0.2, 0.2, 0)[0]]
    columns = ColumnTransformer([
        ("numbers", StandardScaler(), ["tenure", "monthly", "senior"]),
        ("text", OneHotEncoder(handle_unknown="ignore"), ["contract", "payment"]),
    ])  # fmt: skip
    pipeline = make_pipeline(columns, LogisticRegression(C=2 / (rho * len(train)), max_iter=5000))
    return pipeline.fit(train.drop(columns=["churn"]), train["churn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="reports")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--domain", choices=("auto", "relaxed"), default="auto", help="relaxed: poisons not mapped into the domain")
    parser.add_argument("--model", choices=("logreg", "pipeline"), default="logreg", help="pipeline: the user's ColumnTransformer → LogisticRegression")
    parser.add_argument("--refine", choices=("on", "off"), default="on", help="off: rounded poisons only (measures the refinement)")
    args = parser.parse_args()
    if args.refine == "off":  # the measurement's switch: no attack offers its objective, so poisons are rounded only
        from audit.attacks.base import AuditAttack

        AuditAttack.domain_objective = lambda self, x, y, y_p: None  # type: ignore[method-assign]
    configure_threads(args.threads)
    config = parse_config({"name": f"tables-churn-{args.domain}-{args.model}-refine-{args.refine}", "model": {"name": "logreg"}, "candidates": {"l2": [1e-3, 1e-2]},
                           "budgets": [0.03, 0.1], "seeds": [0, 1, 2], "device": "cpu"})  # fmt: skip
    config = config.model_copy(update={"dataset": config.dataset.model_copy(update={"domain": args.domain})})
    model = shipped_pipeline(churn_table(), rho=1e-2) if args.model == "pipeline" else None
    start = time.perf_counter()
    result = audit.run_audit(config, model=model, dataset=churn_table(), label="churn", output_dir=args.out, progress=False)
    print(f"audit: {time.perf_counter() - start:.0f} s")
    print("report:", write_report(result))
    data = result.plan.dataset
    print("classes:", data.class_names)
    print("model:", result.summary.get("victim") or result.plan.victim.description)
    deployed = result.summary.get("deployed")
    if deployed:
        print("your model:", deployed["statement"])
    print("domain:", data.domain.sentence() if data.domain is not None else "relaxed (continuous in the box)")
    store = Store.open_existing(result.run_dir)
    try:
        keys = [str(np.load(p, allow_pickle=False)["key"]) for p in sorted(store.poison_dir.glob("*.npz"))]
        table = data.domain or audit.data.from_frame(churn_table(), "churn").domain
        feasible = sum(table.contains(store.load_poisons(k)[0]) for k in keys)
        moved = sum(store.load_poisons(k)[2].get("domain_projected", 0) for k in keys)
    finally:
        store.close()
    print(f"poison sets inside the domain: {feasible} of {len(keys)}; poisons the mapping changed: {moved}")
    rec = result.recommendation
    print("recommendation:", rec["label"], "worst-case test drop", json.dumps(rec["worst_case_drop"]), json.dumps(rec["worst_attack"]))
    for row in result.summary["candidates"]:
        print(" ", json.dumps(row["hyperparameters"]), json.dumps(row["worst_case_drop"]), json.dumps(row["worst_attack"]))


if __name__ == "__main__":
    main()

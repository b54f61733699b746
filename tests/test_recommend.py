import json

import pytest

from audit.grid.store import Cell, candidate_key
from audit.report.recommend import aggregate, candidate_label, pair_id, recommend


def _cells(table):
    """table: {l2: (clean_val, clean_test, {(attack, eps): (poisoned_val, poisoned_test)})} for seed 0."""
    cells, clean = [], []
    for l2, (cv, ct, results) in table.items():
        cand = candidate_key({"l2": l2})
        clean.append((cand, 0, cv, ct, 0.1, {}))
        for (attack, eps), (pv, pt) in results.items():
            cells.append(Cell(cell_key=f"{l2}{attack}{eps}", position=len(cells), candidate=cand, attack=attack, budget=eps,
                              defense="none", seed=0, status="ok", clean_val=cv, clean_test=ct, poisoned_val=pv,
                              poisoned_test=pt, n_poison=10, poisons_removed=0, clean_removed=0, seconds=1.0))
    return cells, clean


TABLE = {
    0.0: (90.0, 91.0, {("a", 0.1): (80.0, 79.0), ("b", 0.1): (85.0, 86.0)}),  # best clean, worst robustness
    0.01: (89.5, 90.0, {("a", 0.1): (86.0, 85.0), ("b", 0.1): (84.0, 83.5)}),  # within 1 point, worst case 84
    0.1: (85.0, 85.5, {("a", 0.1): (84.5, 84.0), ("b", 0.1): (84.8, 84.9)}),  # most robust, but 5 points worse clean
}


def test_worst_case_is_over_attacks_and_recommendation_respects_the_tolerance():
    cells, clean = _cells(TABLE)
    summaries = aggregate(cells, clean, [{"l2": k} for k in TABLE], ["a", "b"], [0.1], [0], "none")
    by = {s.hparams["l2"]: s for s in summaries}
    assert by[0.0].worst_val[0.1] == 80.0 and by[0.0].worst_attack[0.1] == "a"
    assert by[0.01].worst_val[0.1] == 84.0 and by[0.01].worst_attack[0.1] == "b"
    assert by[0.01].worst_damage_test[0.1] == pytest.approx(90.0 - 83.5)
    rec = recommend(summaries, 0.1, tolerance=1.0)
    assert json.loads(rec.key) == {"l2": 0.01}
    assert rec.eligible == [pair_id(candidate_key({"l2": 0.0}), "none"), pair_id(candidate_key({"l2": 0.01}), "none")]
    assert "ρ=0.1 holds up better under attack (84.50)" in rec.reason and "outside the tolerance" in rec.reason
    assert "the test split was not used to choose" in rec.reason


def test_a_wider_tolerance_admits_the_robust_candidate():
    cells, clean = _cells(TABLE)
    summaries = aggregate(cells, clean, [{"l2": k} for k in TABLE], ["a", "b"], [0.1], [0], "none")
    assert json.loads(recommend(summaries, 0.1, tolerance=6.0).key) == {"l2": 0.1}


def test_selection_never_reads_the_test_split():
    table = {k: (cv, 0.0, {key: (pv, 0.0) for key, (pv, _) in res.items()}) for k, (cv, _, res) in TABLE.items()}
    cells, clean = _cells(table)
    summaries = aggregate(cells, clean, [{"l2": k} for k in TABLE], ["a", "b"], [0.1], [0], "none")
    assert json.loads(recommend(summaries, 0.1, tolerance=1.0).key) == {"l2": 0.01}


def test_no_finished_cells_no_recommendation():
    rec = recommend(aggregate([], [], [{"l2": 0.0}], ["a"], [0.1], [0], "none"), 0.1, 1.0)
    assert rec.key is None and "nothing to recommend" in rec.reason


def test_labels():
    assert candidate_label({"l2": 0.001, "width": 64}) == "ρ=0.001, width=64"


def test_a_defended_setting_is_recommended_when_it_keeps_clean_accuracy_and_wins_the_worst_case():
    cells, clean = _cells(TABLE)
    plain = aggregate(cells, clean, [{"l2": k} for k in TABLE], ["a", "b"], [0.1], [0], "none")
    defended_cells = [Cell(**{**c.__dict__, "defense": "sever", "poisoned_val": c.poisoned_val + 3.0,
                              "cell_key": c.cell_key + "s"}) for c in cells]  # fmt: skip
    defended_clean = [(cand, s, val - 0.5, test - 0.5, 0.0, {}) for cand, s, val, test, _, _ in clean]
    defended = aggregate(defended_cells, defended_clean, [{"l2": k} for k in TABLE], ["a", "b"], [0.1], [0], "sever")
    rec = recommend(plain + defended, 0.1, tolerance=1.0)
    assert rec.defense == "sever" and json.loads(rec.key) == {"l2": 0.01}
    assert rec.label == "ρ=0.01 + sever"

"""Certified radii of DPA, Finite Aggregation and Run-off Election against brute force.

The brute force is written independently of :mod:`audit.maths.certificates`: it recounts votes
and re-runs the elections on every output of every choice of corrupted learners (buckets, for
FA) and finds the smallest number of corruptions that changes the prediction. A certificate is
*sound* when its radius is below that number, *tight* when it is that number less one.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from audit.maths.certificates import (
    certified_curve,
    dpa_radius,
    fa_radius,
    fa_training_buckets,
    roe_radius,
    spread_offsets,
    vote_table,
)
from audit.models import Candidate


def plurality(tops: list[int], c: int) -> int:
    counts = [tops.count(j) for j in range(c)]
    return max(range(c), key=lambda j: (counts[j], -j))


def prefers(s: np.ndarray, a: int, b: int) -> bool:
    return bool(s[a] > s[b] or (s[a] == s[b] and a < b))


def runoff(scores: list[np.ndarray], c: int) -> int:
    tops = [int(np.argmax(s)) for s in scores]
    counts = [tops.count(j) for j in range(c)]
    m1, m2 = sorted(range(c), key=lambda j: (-counts[j], j))[:2]
    margin = sum(1 if prefers(s, m1, m2) else -1 for s in scores)
    return m1 if margin > 0 or (margin == 0 and m1 < m2) else m2


def brute_vote_radius(tops: list[int], c: int, groups: list[list[int]]) -> int:
    """Largest r such that corrupting any r groups of learners (each group's learners set to any classes)
    leaves the plurality vote unchanged."""
    base = plurality(tops, c)
    for r in range(1, len(groups) + 1):
        for chosen in itertools.combinations(range(len(groups)), r):
            hit = sorted({i for g in chosen for i in groups[g]})
            for new in itertools.product(range(c), repeat=len(hit)):
                t = list(tops)
                for i, v in zip(hit, new):
                    t[i] = v
                if plurality(t, c) != base:
                    return r - 1
    return len(groups)


def brute_roe_radius(scores: list[np.ndarray], c: int, max_r: int) -> int:
    """The run-off's radius by brute force: every ranking of every choice of up to ``max_r`` corrupted learners."""
    return brute_fa_roe_radius(scores, c, [[i] for i in range(len(scores))], max_r)


def test_dpa_radius_is_exact_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        k, c = int(rng.integers(1, 8)), 3
        tops = rng.integers(0, c, size=k).tolist()
        prediction, radius = dpa_radius(vote_table(np.array([tops]), c))
        assert prediction[0] == plurality(tops, c)
        assert radius[0] == brute_vote_radius(tops, c, [[i] for i in range(k)])


def test_finite_aggregation_is_sound_against_brute_force_and_dpa_at_spread_one() -> None:
    rng = np.random.default_rng(1)
    tight = total = 0
    for k, d in ((3, 2), (2, 3), (4, 2)):
        for _ in range(15):
            c = 3
            offsets = spread_offsets(k, d, int(rng.integers(1 << 30)))
            tops = rng.choice(c, size=k * d, p=[0.8, 0.12, 0.08]).tolist()
            reached = [[(h + s) % (k * d) for s in offsets] for h in range(k * d)]
            prediction, radius = fa_radius(np.array([tops]), offsets, c)
            truth = brute_vote_radius(tops, c, reached)
            assert prediction[0] == plurality(tops, c)
            assert 0 <= radius[0] <= truth
            tight, total = tight + (radius[0] == truth), total + 1
    assert tight / total > 0.8  # measured: 45 of 45 (two buckets sharing a learner would make it loose)
    tops = rng.integers(0, 4, size=(300, 9))
    np.testing.assert_array_equal(fa_radius(tops, spread_offsets(9, 1, 0), 4)[1], dpa_radius(vote_table(tops, 4))[1])


def test_fa_buckets_reach_the_learners_that_train_on_them() -> None:
    k, d = 4, 3
    offsets = spread_offsets(k, d, 7)
    buckets = fa_training_buckets(k, offsets)
    assert buckets.shape == (k * d, d)
    for h in range(k * d):
        learners = {(h + s) % (k * d) for s in offsets}
        assert learners == {i for i in range(k * d) if h in buckets[i]}


@pytest.mark.parametrize(("c", "cap", "learners"), [(2, 3, (3, 8)), (3, 3, (5, 10)), (4, 2, (5, 7))])
def test_run_off_radius_is_sound_against_brute_force(c: int, cap: int, learners: tuple[int, int]) -> None:
    """Learners' scores scattered around a random centre; the brute force tries every ranking of every
    choice of up to ``cap`` corrupted learners (a radius of ``cap`` or more is then only bounded)."""
    rng = np.random.default_rng(c)
    tight = total = 0
    for _ in range(30):
        k = int(rng.integers(*learners))
        scores = rng.normal(size=c) + rng.normal(size=(k, 1, c)) * rng.uniform(0.3, 1.5)
        prediction, radius = roe_radius(scores)
        per = [scores[i, 0] for i in range(k)]
        assert prediction[0] == runoff(per, c)
        truth = brute_roe_radius(per, c, max_r=cap)  # the true radius, or cap when no cap corruptions change it
        assert radius[0] <= truth or truth == cap
        if truth < cap:
            tight, total = tight + (radius[0] == truth), total + 1
        if c == 2:  # two classes: the run-off is the vote
            assert radius[0] == dpa_radius(vote_table(scores.argmax(axis=2).T, c))[1][0]
    assert tight / total > 0.8  # measured: 46 of 47 below the cap


def test_run_off_against_dpa_on_the_same_learners() -> None:
    """Many seeded ensembles: how often each certificate is larger (the numbers the README quotes)."""
    rng = np.random.default_rng(11)
    k, c, n = 50, 10, 4000
    centre = rng.normal(size=(n, c)) * 1.5
    scores = centre[None] + rng.normal(size=(k, n, c)) * 2.0
    y = centre.argmax(axis=1)
    p_dpa, r_dpa = dpa_radius(vote_table(scores.argmax(axis=2).T, c))
    p_roe, r_roe = roe_radius(scores)
    both = (p_dpa == y) & (p_roe == y)
    roe_wins, dpa_wins = np.mean(both & (r_roe > r_dpa)), np.mean(both & (r_dpa > r_roe))
    assert roe_wins > dpa_wins
    radii = np.arange(0, 26)
    assert np.all(certified_curve(p_roe, r_roe, y, radii) >= certified_curve(p_dpa, r_dpa, y, radii) - 2.0)


def test_certified_curve_counts_correct_points_with_radius_at_least_r() -> None:
    prediction, radius, y = np.array([0, 1, 1, 2]), np.array([3, 0, 5, 2]), np.array([0, 1, 0, 2])
    np.testing.assert_allclose(certified_curve(prediction, radius, y, np.array([0, 1, 3, 6])), [75.0, 50.0, 25.0, 0.0])


class CentroidVictim:
    """A nearest-centroid learner as a torch victim (closed-form fit, an ``nn.Linear``): fast enough to retrain an
    ensemble for every perturbation of a training set."""

    builds_modules = True
    n_classes = 3

    def fit(self, x: np.ndarray, y: np.ndarray, hparams: dict, seed: int):
        import torch

        from audit.models.victim import FittedTorch

        layer = torch.nn.Linear(x.shape[1], self.n_classes)
        with torch.no_grad():
            for c in range(self.n_classes):
                mu = x[y == c].mean(axis=0) if np.any(y == c) else np.zeros(x.shape[1])
                layer.weight[c] = torch.as_tensor(mu)
                layer.bias[c] = -0.5 * float(mu @ mu) - (0.0 if np.any(y == c) else 1e6)
        return FittedTorch(task="classification", n_classes=self.n_classes, module=layer, input_shape=(x.shape[1],))


def test_no_poisoning_within_the_certified_radius_changes_a_certified_prediction() -> None:
    """Seeded tiny problem, real partition ensembles (DPA, its run-off, FA at d = 2 and its run-off) retrained on every
    perturbation: each single removal of a training point, and sets of 2 or 3 removals and far-out insertions.
    A test point whose radius is at least the number of changes keeps its prediction; the perturbations are
    strong enough to change some prediction whose radius is smaller."""
    from audit.defenses.dpa import DeepPartitionAggregation, FiniteAggregation

    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0], [1.2, 0.0], [0.0, 1.2]])
    y = rng.integers(0, 3, size=80)
    x = (centres[y] + rng.normal(size=(80, 2)) * 0.6).astype(np.float32)
    x_test = (centres[np.arange(60) % 3] + rng.normal(size=(60, 2)) * 0.6).astype(np.float32)
    y_test = np.arange(60) % 3
    victim = CentroidVictim()
    ensembles = {
        "dpa": DeepPartitionAggregation(0.0, 0, partitions=4, evaluation=(x_test, y_test), n_clean=80),
        "roe": DeepPartitionAggregation(0.0, 0, partitions=4, aggregation="runoff", evaluation=(x_test, y_test), n_clean=80),
        "fa": FiniteAggregation(0.0, 0, partitions=4, spread=2, evaluation=(x_test, y_test), n_clean=80),
        "fa_roe": FiniteAggregation(0.0, 0, partitions=4, spread=2, aggregation="runoff", evaluation=(x_test, y_test), n_clean=80),
    }
    base = {name: e.apply(x, y, victim, Candidate("{}", {}, 0.0)) for name, e in ensembles.items()}
    radius = {}
    for name, result in base.items():
        offsets = spread_offsets(4, 2, 0) if name.startswith("fa") else np.zeros(1, dtype=np.int64)
        certificates = ensembles[name].certify(result.fitted.raw_scores(x_test), 4, offsets, 3)
        radius[name] = certificates[result.diagnostics["certificate"]][1]
        assert radius[name].max() >= 2  # the test reaches radii above one change
    prediction = {name: r.fitted.predict(x_test) for name, r in base.items()}
    # every single removal, then seeded sets of m = 2 or 3 changes (removals and far-out insertions)
    perturbations: list[tuple[np.ndarray, np.ndarray, int]] = [(np.delete(x, i, 0), np.delete(y, i), 1) for i in range(len(y))]
    for _ in range(30):
        m = int(rng.integers(2, 4))
        n_del = int(rng.integers(0, m + 1))
        keep = np.delete(np.arange(len(y)), rng.choice(len(y), n_del, replace=False))
        far = (rng.normal(size=(m - n_del, 2)) * 8).astype(np.float32)
        perturbations.append((np.concatenate([x[keep], far]), np.concatenate([y[keep], rng.integers(0, 3, m - n_del)]), m))
    changed_below = 0
    for x_p, y_p, m in perturbations:
        for name, e in ensembles.items():
            moved = e.apply(x_p, y_p, victim, Candidate("{}", {}, 0.0)).fitted.predict(x_test) != prediction[name]
            assert not np.any(moved & (radius[name] >= m)), (name, m)
            changed_below += int(np.any(moved))
    assert changed_below > 10


def test_batched_softmax_matches_each_learner_alone_and_autograd() -> None:
    """The batched objective, gradient and Hessian-vector product of K learners equal, learner by learner, the
    closed-form single problem (:class:`LinearERM`) on that learner's points, and autograd."""
    import torch

    from audit.maths.batched import BatchedSoftmax, batched_newton_cg
    from audit.maths.implicit import LinearERM

    g = torch.Generator().manual_seed(0)
    k, n_max, d, c = 4, 9, 5, 3
    phi = torch.randn(k, n_max, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (k, n_max), generator=g)
    sizes = [9, 6, 3, 7]
    mask = torch.zeros(k, n_max, dtype=torch.float64)
    for i, n in enumerate(sizes):
        mask[i, :n] = 1.0
    problem = BatchedSoftmax(phi, labels, mask, 0.05, c)
    w = torch.randn(k, c * (d + 1), generator=g, dtype=torch.float64)
    u = torch.randn(k, c * (d + 1), generator=g, dtype=torch.float64)
    values, grads, hvps = problem.value(w), problem.grad(w), problem.hvp(w)(u)
    for i, n in enumerate(sizes):
        alone = LinearERM(phi[i, :n], labels[i, :n], 0.05, c)
        torch.testing.assert_close(values[i], alone.value(w[i]))
        torch.testing.assert_close(grads[i], alone.grad(w[i]))
        torch.testing.assert_close(hvps[i], alone.hvp(w[i])(u[i]))
    wv = w.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(problem.value(wv).sum(), wv)
    torch.testing.assert_close(auto, grads)
    fit = batched_newton_cg(problem, torch.zeros_like(w), tol=1e-10)
    assert float(fit.grad_norm.max()) <= 1e-10
    for i, n in enumerate(sizes):  # each learner's own minimiser: its gradient alone is zero there
        assert float(LinearERM(phi[i, :n], labels[i, :n], 0.05, c).grad(fit.w[i]).norm()) <= 1e-10


def test_batched_learners_are_the_learners_the_victim_trains_one_at_a_time() -> None:
    """breast_cancer softmax regression, 10 partitions: the batched learners' objectives equal the victim's own
    L-BFGS fits to 1e-6 and the ensembles predict alike on the test set (measured: all 114 points)."""
    import torch

    from audit.config import DatasetSpec, ModelSpec, TrainingSpec
    from audit.data import load_dataset
    from audit.defenses.dpa import DeepPartitionAggregation
    from audit.models import build_victim

    data = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), data, torch.device("cpu"))
    runs = {}
    for batched in (True, False):
        dpa = DeepPartitionAggregation(0.0, 0, partitions=10, evaluation=(data.x_test, data.y_test), n_clean=len(data.y_train),
                                       batched=batched)  # fmt: skip
        runs[batched] = dpa.apply(data.x_train, data.y_train, victim, Candidate.of(victim, {"l2": 1e-2}))
    for fast, slow in zip(runs[True].fitted.members, runs[False].fitted.members):
        assert fast.train_result["batched"] and fast.train_result["converged"]
        assert fast.train_result["objective"] == pytest.approx(slow.train_result["objective"], abs=1e-6)  # measured 2.8e-8
    agree = np.mean(runs[True].fitted.predict(data.x_test) == runs[False].fitted.predict(data.x_test))
    assert agree >= 0.99
    assert runs[True].diagnostics["certified_curves"]["dpa"][:3] == pytest.approx(runs[False].diagnostics["certified_curves"]["dpa"][:3], abs=1.0)


def brute_fa_roe_radius(scores: list[np.ndarray], c: int, reached: list[list[int]], max_r: int) -> int:
    """Every ranking of every learner reached by every choice of up to ``max_r`` corrupted buckets."""
    rankings = [np.array(p, dtype=float) for p in itertools.permutations(range(c))]
    base = runoff(scores, c)
    for r in range(1, max_r + 1):
        for chosen in itertools.combinations(range(len(reached)), r):
            hit = sorted({i for b in chosen for i in reached[b]})
            for new in itertools.product(rankings, repeat=len(hit)):
                s = list(scores)
                for i, v in zip(hit, new):
                    s[i] = v
                if runoff(s, c) != base:
                    return r - 1
    return max_r


def test_run_off_over_finite_aggregation_is_sound_against_brute_force() -> None:
    from audit.maths.certificates import fa_roe_radius

    rng = np.random.default_rng(10)
    tight = total = 0
    for k, d, c in ((4, 2, 3), (3, 2, 3), (2, 3, 3)):
        for _ in range(12):
            offsets = spread_offsets(k, d, int(rng.integers(1 << 30)))
            scores = rng.normal(size=c) * 1.5 + rng.normal(size=(k * d, 1, c)) * rng.uniform(0.3, 1.2)
            reached = [[(h + s) % (k * d) for s in offsets] for h in range(k * d)]
            prediction, radius = fa_roe_radius(scores, offsets)
            per = [scores[i, 0] for i in range(k * d)]
            assert prediction[0] == runoff(per, c)
            cap = 3
            truth = brute_fa_roe_radius(per, c, reached, cap)
            assert radius[0] <= truth or truth == cap
            if truth < cap:
                tight, total = tight + (radius[0] == truth), total + 1
    assert total >= 20 and tight / total > 0.8  # measured: tight on every draw (radii 0–2)

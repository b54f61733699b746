"""Issue 15: the sphere and slab sanitisers and their acceptance region."""

import numpy as np
import pytest

from audit.defenses import DEFENSES
from audit.maths.regions import AcceptanceRegion, class_centroids, slab_directions
from audit.models import Candidate


def _blobs(seed=0, n=400, d=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) * 0.5 + np.where(y[:, None] == 1, 1.0, -1.0)
    return x, y


class _Data:
    def __init__(self, x, y):
        self.x_train, self.y_train, self.n_classes = x, y, int(y.max() + 1)


@pytest.mark.parametrize("name", ["sphere", "slab", "sphere_slab"])
def test_oracle_thresholds_keep_the_quantile_of_clean_points_and_drop_far_poisons(name):
    x, y = _blobs()
    defense = DEFENSES[name].for_cell(0.1, 0, _Data(x, y), {"quantile": 0.9})
    far = np.array([[6.0, -6.0], [-6.0, 6.0]])  # far from both centroids, across the line between them
    poisons_x = np.r_[far, [[-5.0, -5.0]]]  # the last one lies along the class-1 → class-0 line, beyond class 0
    poisons_y = np.array([0, 1, 1])
    mixed_x, mixed_y = np.r_[x, poisons_x], np.r_[y, poisons_y]
    result = defense.apply(mixed_x, mixed_y, victim=None, candidate=Candidate("{}", {}, 0.0))
    kept_clean = result.keep[: len(y)]
    tests = 2 if name == "sphere_slab" else 1  # each test rejects 10 % of the clean points; together at most 20 % (union bound)
    for k in (0, 1):
        assert 1 - tests * 0.1 - 1 / (y == k).sum() <= kept_clean[y == k].mean() <= 0.9 + 1 / (y == k).sum()
    if name != "slab":
        assert not result.keep[len(y) :].any()  # a sphere rejects every far point
    else:
        assert not result.keep[-1]  # beyond class 0's end of the line, labelled 1: outside class 1's slab
    assert result.diagnostics.removed == int((~result.keep).sum())


def test_the_default_quantile_follows_the_assumed_poison_rate():
    x, y = _blobs()
    defense = DEFENSES["sphere"].for_cell(0.25, 0, _Data(x, y), {})
    assert defense.level() == pytest.approx(0.8)
    kept = defense.apply(x, y, victim=None, candidate=Candidate("{}", {}, 0.0)).keep
    assert kept.mean() == pytest.approx(0.8, abs=0.02)


def test_data_centroids_move_with_the_poisons_oracle_ones_do_not():
    x, y = _blobs()
    cluster = np.tile([[4.0, 4.0]], (150, 1))  # a heavy cluster labelled 0 drags the data centroid of class 0
    mixed_x, mixed_y = np.r_[x, cluster], np.r_[y, np.zeros(150, int)]
    oracle = DEFENSES["sphere"].for_cell(0.3, 0, _Data(x, y), {"quantile": 0.95})
    data = DEFENSES["sphere"].for_cell(0.3, 0, _Data(x, y), {"quantile": 0.95, "centroids": "data"})
    assert not oracle.apply(mixed_x, mixed_y, None, Candidate("{}", {}, 0.0)).keep[len(y) :].any()
    # the dragged centroid accepts them: why oracle is the default
    assert data.apply(mixed_x, mixed_y, None, Candidate("{}", {}, 0.0)).keep[len(y) :].all()


def test_projection_is_the_nearest_feasible_point_against_a_brute_force_grid():
    x, y = _blobs(d=2)
    mu = class_centroids(x, y, 2)
    both = AcceptanceRegion(mu, radii=np.array([1.2, 1.0]), directions=slab_directions(mu), widths=np.array([0.5, 0.4]))
    slab_only = AcceptanceRegion(mu, directions=slab_directions(mu), widths=np.array([0.5, 0.4]))  # the exact slab ∩ box path
    lo, hi = np.array([-2.0, -2.0]), np.array([2.0, 0.5])
    grid = np.stack(np.meshgrid(np.linspace(-2, 2, 801), np.linspace(-2, 0.5, 501)), -1).reshape(-1, 2)
    rng = np.random.default_rng(1)
    for region in [both] * 6 + [slab_only] * 8:
        point, label = rng.uniform(-3, 3, 2), int(rng.integers(0, 2))
        z = region.project(point, label, lo, hi)
        assert region.accepts(z[None], np.array([label]), slack=1e-6)[0] and np.all(z >= lo - 1e-9) and np.all(z <= hi + 1e-9)
        feasible = grid[region.accepts(grid, np.full(len(grid), label))]
        best = np.min(np.linalg.norm(feasible - point, axis=1))
        assert np.linalg.norm(z - point) <= best + 1e-6  # no grid point of the region is nearer
        assert np.linalg.norm(z - point) >= best - 0.01  # and it is as near as the grid resolves (5e-3 spacing)


def test_slab_directions_are_unit_and_point_between_the_centroids():
    mu = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    v = slab_directions(mu)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert v[1] @ (mu[1] - mu[[0, 2]].mean(axis=0)) > 0
    binary = slab_directions(mu[:2])
    assert np.allclose(binary[0], [1.0, 0.0, 0.0]) and np.allclose(binary[1], binary[0])


def test_the_batched_projection_agrees_with_the_exact_one_and_is_feasible():
    import torch

    from audit.maths.regions import project_many

    x, y = _blobs(d=2)
    mu = class_centroids(x, y, 2)
    region = AcceptanceRegion(mu, radii=np.array([1.2, 1.0]), directions=slab_directions(mu), widths=np.array([0.5, 0.4]))
    lo, hi = np.array([-2.0, -2.0]), np.array([2.0, 1.5])
    rng = np.random.default_rng(2)
    points, labels = rng.uniform(-3, 3, (40, 2)), rng.integers(0, 2, 40)
    batched = project_many(region, torch.tensor(points), torch.tensor(labels), torch.tensor(lo), torch.tensor(hi), iterations=200).numpy()
    exact = np.stack([region.project(p, int(k), lo, hi) for p, k in zip(points, labels)])
    assert region.accepts(batched, labels).all() and np.all(batched >= lo) and np.all(batched <= hi)
    np.testing.assert_allclose(batched, exact, atol=1e-3)

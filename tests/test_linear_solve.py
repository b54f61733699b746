"""The injectable linear solvers: each against an exact solve, and each saying how it ended."""

import numpy as np
import pytest
import torch

from audit.maths.linear_solve import CG, ExactSolve, NormalCG, make_solver


def _spd(d=10, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(d, d))
    return torch.tensor(m @ m.T + d * np.eye(d)), torch.tensor(rng.normal(size=d))


def _indefinite(d=10, seed=1):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.r_[np.linspace(1, 3, d - 3), [-0.5, -1.0, -2.0]]  # a network's Hessian: some negative curvature
    return torch.tensor(q @ np.diag(eig) @ q.T), torch.tensor(rng.normal(size=d))


@pytest.mark.parametrize("solver", [CG(1e-12, 200), NormalCG(1e-12, 400), ExactSolve(1e-10)])
def test_every_solver_matches_the_exact_solution_on_spd(solver):
    a, b = _spd()
    result = solver(lambda v: a @ v, b)
    torch.testing.assert_close(result.x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-9)
    assert result.converged and result.stop in ("tolerance", "exact") and result.method == solver.name


def test_cg_says_it_met_negative_curvature_and_normal_cg_solves_the_indefinite_system():
    a, b = _indefinite()
    cg = CG(1e-10, 200)(lambda v: a @ v, b)
    assert not cg.converged and cg.stop == "curvature"
    normal = NormalCG(1e-12, 400)(lambda v: a @ v, b)
    assert normal.converged and normal.stop == "tolerance"
    torch.testing.assert_close(normal.x, torch.linalg.solve(a, b), rtol=1e-7, atol=1e-8)
    exact = ExactSolve()(lambda v: a @ v, b)
    assert exact.stop == "exact" and exact.residual < 1e-12 and exact.n_iter == len(b)


def test_an_iteration_cap_is_reported():
    a, b = _spd()
    capped = CG(1e-12, 2)(lambda v: a @ v, b)
    assert not capped.converged and capped.stop == "max_iter" and capped.n_iter == 2 and capped.residual > 1e-6


def test_exact_solve_of_a_singular_system_gives_least_squares_and_says_it_missed():
    a = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    b = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    result = ExactSolve()(lambda v: a @ v, b)
    torch.testing.assert_close(result.x[:2], torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert not result.converged and result.residual == pytest.approx(1 / 6**0.5)  # the unreachable part of b


def test_make_solver_names_and_errors():
    assert make_solver("cg", 1e-3, 7) == CG(1e-3, 7)
    assert make_solver("normal", 1e-3, 7) == NormalCG(1e-3, 7)
    assert make_solver("exact", 1e-3, 7) == ExactSolve(1e-3)
    with pytest.raises(ValueError, match="unknown linear solver 'lu'; valid: cg, normal, exact"):
        make_solver("lu", 1e-3, 7)


@pytest.mark.parametrize("every", [3, 10])
def test_cg_checking_every_k_iterations_returns_the_every_iteration_answer(every):
    """The GPU's cadence (device scalars, steps after the stop masked) against the host loop."""
    from audit.maths.linear_solve import conjugate_gradient

    g = torch.Generator().manual_seed(0)
    m = torch.randn(40, 40, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(40, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64)
    host = conjugate_gradient(lambda v: a @ v, b, tol=1e-8, max_iter=200, check_every=1)
    masked = conjugate_gradient(lambda v: a @ v, b, tol=1e-8, max_iter=200, check_every=every)
    assert host.converged and masked.converged and masked.stop == host.stop == "tolerance"
    assert masked.n_iter == host.n_iter
    torch.testing.assert_close(masked.x, host.x, rtol=1e-12, atol=1e-12)
    assert masked.residual == pytest.approx(host.residual, rel=1e-9)
    indefinite = conjugate_gradient(lambda v: -v, b, tol=1e-8, max_iter=50, check_every=every)
    assert indefinite.stop == "curvature" and not indefinite.converged and torch.equal(indefinite.x, torch.zeros_like(b))


@pytest.mark.parametrize("every", [1, 10])
def test_preconditioned_cg_solves_to_the_same_tolerance_in_fewer_iterations(every):
    """Preconditioned CG (both cadences): the exact solution to the same true residual; with a Jacobi
    preconditioner on a badly scaled SPD matrix far fewer iterations than plain CG; with ``M = A`` one."""
    from audit.maths.linear_solve import conjugate_gradient

    g = torch.Generator().manual_seed(0)
    m = torch.randn(60, 60, generator=g, dtype=torch.float64)
    scale = torch.logspace(0, 3, 60, dtype=torch.float64)
    a = scale[:, None] * (m @ m.T / 60 + torch.eye(60, dtype=torch.float64)) * scale[None, :]
    b = torch.randn(60, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    plain = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=2000, check_every=every)
    jacobi = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=2000, check_every=every,
                                precondition=lambda r: r / torch.diagonal(a))  # fmt: skip
    assert jacobi.converged and plain.converged and jacobi.residual <= 1e-10
    assert jacobi.n_iter * 3 <= plain.n_iter
    torch.testing.assert_close(jacobi.x, exact, rtol=1e-6, atol=1e-12)
    perfect = CG(1e-10, 50, precondition=lambda r: torch.linalg.solve(a, r))(lambda v: a @ v, b)
    assert perfect.n_iter == 1 and perfect.converged

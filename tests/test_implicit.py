"""Issue 21: implicit hypergradients at the optimum of a convex victim, against finite differences of
the re-optimised model (float64) and against the unrolled reverse mode as T grows."""

import pytest
import torch

from audit.maths.hypergrad import FlatModel, functional_objective, rmd, validation_loss
from audit.maths.implicit import implicit_hypergradient
from audit.maths.linear_solve import ExactSolve
from audit.models.zoo import LogReg, Ridge


def _problem(kind: str):
    gen = torch.Generator().manual_seed(0)
    d = 3
    x, xv = torch.randn(14, d, generator=gen, dtype=torch.float64), torch.randn(9, d, generator=gen, dtype=torch.float64)
    xp = torch.rand(2, d, generator=gen, dtype=torch.float64)
    if kind == "ridge":
        module, task = Ridge(d).double(), "regression"
        y, yv, yp = (torch.randn(n, generator=gen, dtype=torch.float64) for n in (14, 9, 2))
    else:
        module, task = LogReg(d, 3).double(), "classification"
        y, yv, yp = (torch.randint(0, 3, (n,), generator=gen) for n in (14, 9, 2))
    model = FlatModel.of(module)
    inner = functional_objective(model, x, y, task, yp)
    outer = validation_loss(model, xv, yv, task)
    return model, inner, outer, [xp, torch.tensor(-1.0, dtype=torch.float64)]


def _optimum(model, inner, hypers, steps=200):
    """The minimiser by Newton's method on the flat weights (exact Hessian, pseudo-inverse: softmax's biases
    leave the objective flat along "add the same constant to every class", the only null direction)."""
    w = torch.zeros_like(model.reg_mask)
    for _ in range(steps):
        w_var = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(inner(w_var, *hypers), w_var, create_graph=True)
        if float(g.detach().norm()) < 1e-13:
            break
        h = torch.stack([torch.autograd.grad(g[i], w_var, retain_graph=True)[0] for i in range(len(w))])
        w = (w_var - torch.linalg.pinv(h, hermitian=True) @ g).detach()
    return w


@pytest.mark.parametrize("kind", ["logreg", "ridge"])
def test_implicit_hypergradient_matches_finite_differences_of_the_reoptimised_model(kind):
    model, inner, outer, hypers = _problem(kind)
    w = _optimum(model, inner, hypers)
    result = implicit_hypergradient(inner, outer, w, hypers)
    assert result.stationarity < 1e-10 and result.solve.converged
    exact = implicit_hypergradient(inner, outer, w, hypers, ExactSolve()) if kind == "ridge" else result  # LU needs a regular H
    h = 1e-6
    for i, hyper in enumerate(hypers):
        for index in range(hyper.numel()):
            up, down = [t.clone() for t in hypers], [t.clone() for t in hypers]
            up[i].view(-1)[index] += h
            down[i].view(-1)[index] -= h
            fd = (float(outer(_optimum(model, inner, up))) - float(outer(_optimum(model, inner, down)))) / (2 * h)
            got = float(result.grads[i].reshape(-1)[index])
            assert got == pytest.approx(fd, rel=1e-5, abs=1e-9), f"hyper {i}[{index}]: implicit {got} vs FD {fd}"
            assert float(exact.grads[i].reshape(-1)[index]) == pytest.approx(got, rel=1e-8, abs=1e-12)


def test_unrolled_hypergradients_approach_the_implicit_ones_as_training_lengthens():
    model, inner, outer, hypers = _problem("logreg")
    implicit = implicit_hypergradient(inner, outer, _optimum(model, inner, hypers), hypers).grads[0]
    w0 = torch.zeros_like(model.reg_mask)
    gaps = [float((rmd(inner, outer, w0, hypers, steps, 0.5).grads[0] - implicit).norm()) for steps in (25, 50, 100, 200, 400)]
    assert all(b < a for a, b in zip(gaps, gaps[1:])), gaps  # the gap shrinks monotonically
    assert gaps[-1] < 1e-3 * float(implicit.norm()) + 1e-9, gaps


# --------------------------------------------------------------------------- the closed-form linear ERM and truncated Newton
class _Autograd:
    """The reference: value, gradient and Hessian-vector product of ``objective(w)`` by autograd."""

    def __init__(self, objective):
        self.objective = objective

    def value(self, w):
        return self.objective(w)

    def grad(self, w):
        w = w.detach().requires_grad_(True)
        return torch.autograd.grad(self.objective(w), w)[0]

    def hvp(self, w):
        w = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.objective(w), w, create_graph=True)
        return lambda u: torch.autograd.grad(g, w, grad_outputs=u, retain_graph=True)[0]


@pytest.mark.parametrize("kind", ["logreg", "ridge", "binary"])
def test_linear_erm_value_gradient_and_hvp_equal_autograd_of_the_audit_objective(kind):
    from audit.maths.implicit import LinearERM

    gen = torch.Generator().manual_seed(1)
    d, n = 5, 23
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    if kind == "ridge":
        module, task, y = Ridge(d).double(), "regression", torch.randn(n, generator=gen, dtype=torch.float64)
    else:
        c = 2 if kind == "binary" else 4
        module, task, y = LogReg(d, c).double(), "classification", torch.randint(0, c, (n,), generator=gen)
    model = FlatModel.of(module)
    rho = 0.03
    inner = functional_objective(model, x[:0], y[:0], task, y)  # every point passed as a "poison": the same objective
    reference = _Autograd(lambda w: inner(w, x, torch.tensor(rho, dtype=torch.float64).log()))
    erm = LinearERM(x, y, rho, module.linear.out_features)
    w = torch.randn(len(model.reg_mask), generator=gen, dtype=torch.float64)
    u = torch.randn(len(w), generator=gen, dtype=torch.float64)
    assert float(erm.value(w)) == pytest.approx(float(reference.value(w)), rel=1e-12)
    assert torch.allclose(erm.grad(w), reference.grad(w), rtol=1e-10, atol=1e-12)
    assert torch.allclose(erm.hvp(w)(u), reference.hvp(w)(u), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["logreg", "ridge", "no_bias"])
def test_sparse_rows_give_the_dense_objective_gradient_and_hvp(kind):
    """Mostly-zero clean rows in CSR form (``SparseRows``) followed by dense poison rows: value, gradient and
    Hessian-vector product equal the all-dense problem's to rounding; dense data is not compressed."""
    from audit.maths.implicit import LinearERM, SparseRows

    gen = torch.Generator().manual_seed(3)
    n, k, d, c = 60, 50, 7, {"logreg": 3, "ridge": 1, "no_bias": 3}[kind]
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    x[:k] *= (torch.rand(k, d, generator=gen, dtype=torch.float64) < 0.2).double()  # the clean rows 80 % zeros
    y = torch.randn(n, generator=gen, dtype=torch.float64) if kind == "ridge" else torch.randint(0, c, (n,), generator=gen)
    bias = kind != "no_bias"
    sparse = SparseRows.of(x[:k])
    assert sparse is not None and sparse.n_rows == k and sparse.rows.layout == torch.sparse_csr
    assert SparseRows.of(x[k:]) is None  # dense rows stay dense
    dense_erm, sparse_erm = LinearERM(x, y, 0.02, c, bias), LinearERM(x, y, 0.02, c, bias, sparse=sparse)
    w = torch.randn(c * d + (c if bias else 0), generator=gen, dtype=torch.float64)
    u = torch.randn(len(w), generator=gen, dtype=torch.float64)
    assert float(sparse_erm.value(w)) == pytest.approx(float(dense_erm.value(w)), rel=1e-13)
    torch.testing.assert_close(sparse_erm.grad(w), dense_erm.grad(w), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sparse_erm.hvp(w)(u), dense_erm.hvp(w)(u), rtol=1e-12, atol=1e-14)


def test_gram_eigh_falls_back_to_full_precision_when_float32_returns_nan(monkeypatch):
    """float32's eigensolver can fail by returning NaN without raising (seen on MNIST '0' vs '8' with poisons, which
    then made the preconditioned CG NaN); the decomposition is then computed in the Gram's own precision."""
    from audit.maths import implicit

    gram = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    eigh = torch.linalg.eigh

    def nan_in_float32(a):
        values, vectors = eigh(a)
        return (values * float("nan"), vectors) if a.dtype == torch.float32 else (values, vectors)

    monkeypatch.setattr(torch.linalg, "eigh", nan_in_float32)
    values, vectors = implicit.gram_eigh(gram)
    assert values.dtype == torch.float64 and torch.isfinite(values).all()
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, gram, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["logreg", "ridge", "binary", "no_bias"])
def test_the_kfac_preconditioner_inverts_the_kronecker_product_of_the_mean_curvatures(kind):
    """``LinearERM.preconditioner`` against a dense ``(S̄ ⊗ G' + ρI)⁻¹`` built from its definition (to float32 rounding:
    ``G``'s eigenvectors are computed in float32; ``G'`` is ``G`` without the eigendirections whose curvature is within
    ``KFAC_FLOOR`` of ρ — the 0.1-scaled feature's here, except for the squared loss), exactly symmetric, within
    ``1 + KFAC_FLOOR`` of the full ``(S̄ ⊗ G + ρI)⁻¹``, and for the squared loss without a bias, where ``M`` is the
    Hessian, CG converges in two steps instead of the problem's dimension."""
    from audit.maths.implicit import KFAC_FLOOR, LinearERM
    from audit.maths.linear_solve import conjugate_gradient

    gen = torch.Generator().manual_seed(2)
    n, d, rho = 40, 4, 0.05
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.1, 1.0], dtype=torch.float64)
    c = {"logreg": 3, "binary": 2, "no_bias": 3, "ridge": 1}[kind]
    y = torch.randn(n, generator=gen, dtype=torch.float64) if kind == "ridge" else torch.randint(0, c, (n,), generator=gen)
    bias = kind != "no_bias" and kind != "ridge"
    erm = LinearERM(x, y, rho, c, bias)
    w = torch.randn(c * d + (c if bias else 0), generator=gen, dtype=torch.float64)
    m_inv = erm.preconditioner(w)
    phi = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1) if bias else x
    if kind == "ridge":
        s = torch.ones(1, 1, dtype=x.dtype)
    else:
        p = torch.softmax(erm._logits(w), 1)
        s = torch.diag(p.mean(0)) - p.T @ p / n
    gram = phi.T @ phi / n
    gamma, basis = torch.linalg.eigh(gram)
    dropped = gamma * float(torch.linalg.eigvalsh(s).max()) <= KFAC_FLOOR * rho
    assert int(dropped.sum()) == (0 if kind == "ridge" else 1)  # both forms are exercised
    kept = basis @ torch.diag(torch.where(dropped, 0.0, gamma)) @ basis.T
    width = phi.shape[1]
    order = [j * width + i for j in range(c) for i in range(d)] + ([j * width + d for j in range(c)] if bias else [])
    eye_k = rho * torch.eye(c * width, dtype=x.dtype)
    dense = torch.linalg.inv((torch.kron(s, kept) + eye_k)[order][:, order])  # (c·(d+1))², flat order: W.ravel() then b
    full = (torch.kron(s, gram) + eye_k)[order][:, order]
    eye = torch.eye(len(w), dtype=x.dtype)
    applied = torch.stack([m_inv(e) for e in eye], 1)
    torch.testing.assert_close(applied, dense, rtol=1e-3, atol=1e-3 * float(dense.abs().max()))
    torch.testing.assert_close(applied, applied.T, rtol=1e-12, atol=1e-12)
    ratio = torch.linalg.eigvals(full @ applied).real  # M_full · M⁻¹: 1 where nothing is dropped, ≤ 1 + floor elsewhere
    assert float(ratio.min()) > 1 - 1e-3 and float(ratio.max()) < 1 + KFAC_FLOOR + 1e-3
    if kind == "ridge":
        b = torch.randn(len(w), generator=gen, dtype=torch.float64)
        solved = conjugate_gradient(erm.hvp(w), b, tol=1e-10, max_iter=10, precondition=m_inv)
        assert solved.n_iter <= 2 and solved.converged, solved


def test_newton_cg_reaches_the_exact_minimiser_and_warm_starts_in_few_steps():
    from audit.maths.implicit import LinearERM, newton_cg

    model, inner, _, hypers = _problem("logreg")
    exact = _optimum(model, inner, hypers)
    # the same problem in closed form: the clean points then the two poisons (as functional_objective concatenates)
    gen = torch.Generator().manual_seed(0)
    xc, _ = torch.randn(14, 3, generator=gen, dtype=torch.float64), torch.randn(9, 3, generator=gen, dtype=torch.float64)
    xp = torch.rand(2, 3, generator=gen, dtype=torch.float64)
    yc, _, yp = (torch.randint(0, 3, (k,), generator=gen) for k in (14, 9, 2))
    erm = LinearERM(torch.cat([xc, xp]), torch.cat([yc, yp]), float(torch.exp(hypers[1])), 3)
    cold = newton_cg(erm, torch.zeros_like(exact), tol=1e-11)
    assert cold.grad_norm <= 1e-11
    # softmax biases are free along "+ the same constant": compare predictions' logit differences and the weights
    c = 3
    assert torch.allclose(cold.w[: c * 3], exact[: c * 3], atol=1e-9)
    diff = lambda w: w[c * 3 :] - w[c * 3 :].mean()  # noqa: E731
    assert torch.allclose(diff(cold.w), diff(exact), atol=1e-9)
    moved = LinearERM(torch.cat([xc, xp + 0.05]), torch.cat([yc, yp]), erm.rho, 3)
    warm = newton_cg(moved, cold.w, tol=1e-11)
    assert warm.grad_norm <= 1e-11 and warm.n_iter < newton_cg(moved, torch.zeros_like(exact), tol=1e-11).n_iter
    preconditioned = newton_cg(moved, cold.w, tol=1e-11, precondition=moved.preconditioner)
    assert preconditioned.grad_norm <= 1e-11 and torch.allclose(preconditioned.w[: c * 3], warm.w[: c * 3], atol=1e-9)


def test_an_explicit_term_of_the_objective_joins_both_sides_of_the_implicit_hypergradient():
    """``A(w*) + E(w*, h)`` with ``E`` reading the poisons directly (the loss-filter penalty's shape):
    the implicit result equals central finite differences of the whole objective at the re-optimised model."""
    model, inner, outer, hypers = _problem("logreg")

    labels = torch.tensor([1, 2])

    def explicit(w, x_p, log_l2):  # invariant, like every softmax loss, to the one flat direction of w (a common logit shift)
        return 0.3 * torch.nn.functional.cross_entropy(model(w, x_p), labels) + 0.1 * (x_p**2).sum()

    w = _optimum(model, inner, hypers)
    result = implicit_hypergradient(inner, outer, w, hypers, explicit=explicit)
    h = 1e-6
    for index in range(hypers[0].numel()):
        up, down = [t.clone() for t in hypers], [t.clone() for t in hypers]
        up[0].view(-1)[index] += h
        down[0].view(-1)[index] -= h
        total = lambda hs: float(outer(_optimum(model, inner, hs)) + explicit(_optimum(model, inner, hs), *hs))  # noqa: E731
        fd = (total(up) - total(down)) / (2 * h)
        assert float(result.grads[0].reshape(-1)[index]) == pytest.approx(fd, rel=1e-5, abs=1e-9)

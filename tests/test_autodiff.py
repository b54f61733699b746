import numpy as np
import torch

from audit.maths.autodiff import flat, mean_gradient, objective_hvp, per_sample_gradients
from audit.maths.linear_solve import conjugate_gradient
from audit.models.training import objective
from audit.models.zoo import MLP, LogReg


def test_cg_equals_the_exact_solve_and_reports_how_it_ended():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(12, 12))
    a = torch.tensor(m @ m.T + 12 * np.eye(12))
    b = torch.tensor(rng.normal(size=12))
    result = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iter=100)
    torch.testing.assert_close(result.x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    assert result.converged and 0 < result.n_iter <= 12 and result.residual <= 1e-12
    capped = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iter=2)
    assert not capped.converged and capped.n_iter == 2 and capped.residual > 1e-12


def test_cg_stops_on_negative_curvature():
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    result = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert not result.converged


def test_hvp_equals_the_explicit_hessian():
    torch.manual_seed(0)
    model = LogReg(3, 3).double()
    x, y = torch.randn(15, 3, dtype=torch.float64), torch.randint(0, 3, (15,))
    params = list(model.parameters())
    shapes = [p.shape for p in params]

    def f(theta):
        offset = 0
        chunks = []
        for s in shapes:
            n = int(np.prod(s))
            chunks.append(theta[offset : offset + n].reshape(s))
            offset += n
        out = x @ chunks[0].T + chunks[1]
        return torch.nn.functional.cross_entropy(out, y) + 0.5 * 0.3 * chunks[0].pow(2).sum()

    theta = flat([p.detach() for p in params])
    hessian = torch.autograd.functional.hessian(f, theta)
    v = torch.randn(len(theta), dtype=torch.float64)
    hvp = objective_hvp(model, x, y, "classification", l2=0.3, damping=0.05, chunk=4)
    torch.testing.assert_close(hvp(v), hessian @ v + 0.05 * v, rtol=1e-10, atol=1e-12)


def test_per_sample_and_mean_gradients():
    torch.manual_seed(1)
    model = MLP(4, 3, width=5, depth=1).double()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    grads = per_sample_gradients(model, x, y, "classification", chunk=4)
    for i in (0, 5):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        expected = flat(torch.autograd.grad(loss, list(model.parameters())))
        torch.testing.assert_close(grads[i], expected)
    torch.testing.assert_close(grads.mean(0), mean_gradient(model, x, y, "classification"))
    last = per_sample_gradients(model, x, y, "classification", last_layer_only=True)
    assert last.shape == (9, 5 * 3 + 3)
    torch.testing.assert_close(last[:, :15], grads[:, -18:-3])  # head.weight comes last but one


def test_objective_gradient_consistency():
    torch.manual_seed(2)
    model = LogReg(3, 2).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    g = flat(torch.autograd.grad(objective(model, x, y, "classification", 0.0), list(model.parameters())))
    torch.testing.assert_close(g, mean_gradient(model, x, y, "classification"))

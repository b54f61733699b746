"""Reverse-mode hypergradients: against central finite differences of the unrolled run (float64), and
the checkpointed reverse pass against the stored one."""

import math

import pytest
import torch

from audit.maths.hypergrad import FlatModel, functional_objective, rmd, unroll, validation_loss
from audit.models.zoo import MLP, LogReg, Ridge


def _problem(kind: str):
    gen = torch.Generator().manual_seed(0)
    d = 4
    x, xv = torch.randn(12, d, generator=gen, dtype=torch.float64), torch.randn(9, d, generator=gen, dtype=torch.float64)
    xp = torch.rand(3, d, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    if kind == "ridge":
        module, task = Ridge(d).double(), "regression"
        y, yv = torch.randn(12, generator=gen, dtype=torch.float64), torch.randn(9, generator=gen, dtype=torch.float64)
        yp = torch.rand(3, generator=gen, dtype=torch.float64)
    else:
        module = (LogReg(d, 3) if kind == "logreg" else MLP(d, 3, width=5, depth=1)).double()
        task = "classification"
        y, yv, yp = (torch.randint(0, 3, (n,), generator=gen) for n in (12, 9, 3))
    model = FlatModel.of(module)
    w0 = torch.zeros_like(model.reg_mask) if kind != "mlp" else model.flat()
    inner = functional_objective(model, x, y, task, None if kind == "ridge" else yp)
    outer = validation_loss(model, xv, yv, task)
    hypers = [xp, torch.tensor(-1.5, dtype=torch.float64)] + ([yp] if kind == "ridge" else [])
    return inner, outer, w0, hypers


def _unrolled_outer(inner, outer, w0, hypers, steps, lr):
    w, _ = unroll(inner, w0, hypers, steps, lr, keep_every=steps)
    return float(outer(w))


@pytest.mark.parametrize("kind", ["logreg", "mlp", "ridge"])
def test_rmd_matches_finite_differences(kind):
    inner, outer, w0, hypers = _problem(kind)
    steps, lr, h = 40, 0.3, 1e-6
    result = rmd(inner, outer, w0, hypers, steps, lr)
    assert result.outer == pytest.approx(_unrolled_outer(inner, outer, w0, hypers, steps, lr), rel=1e-12)
    for i, hyper in enumerate(hypers):  # every entry of poisons, log λ (and responses)
        for index in range(hyper.numel()):
            up, down = [t.clone() for t in hypers], [t.clone() for t in hypers]
            up[i].view(-1)[index] += h
            down[i].view(-1)[index] -= h
            fd = (_unrolled_outer(inner, outer, w0, up, steps, lr) - _unrolled_outer(inner, outer, w0, down, steps, lr)) / (2 * h)
            got = float(result.grads[i].reshape(-1)[index])
            assert got == pytest.approx(fd, rel=1e-5, abs=1e-9), f"hyper {i}[{index}]: RMD {got} vs FD {fd}"
    assert float(result.grads[1].abs()) > 1e-6  # log λ does move the validation loss


@pytest.mark.parametrize("every", [1, 4, 7, 40, 100])
def test_checkpointed_reverse_equals_stored(every):
    inner, outer, w0, hypers = _problem("mlp")
    stored = rmd(inner, outer, w0, hypers, 40, 0.3)
    checked = rmd(inner, outer, w0, hypers, 40, 0.3, checkpoint_every=every)
    for a, b in zip(stored.grads, checked.grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(stored.grad_w0, checked.grad_w0, rtol=1e-12, atol=1e-15)
    assert stored.stored_states == 40
    if every == 7:  # 6 checkpoints + one segment of 7 recomputed at a time
        assert checked.stored_states == math.ceil(40 / 7) + 7


def test_penalty_is_on_weights_only():
    """L = mean loss + (e^λ/2)‖W‖²: the bias is not penalised (README: How the audit works, the objective)."""
    model = FlatModel.of(LogReg(2, 2).double())
    x, y = torch.zeros(4, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    inner = functional_objective(model, x, y, "classification", y[:0])
    w = torch.ones_like(model.reg_mask)
    value = inner(w, x[:0], torch.tensor(math.log(3.0), dtype=torch.float64))
    # zero inputs and equal logits: loss log 2; 4 weights of 1 → 3/2 · 4
    assert float(value) == pytest.approx(math.log(2) + 1.5 * 4)


def test_an_explicit_term_in_the_hyperparameters_is_differentiated_through_both_paths():
    """``A(w_T) + E(w_T, h)`` with ``E`` reading the poisons directly (the back-gradient's loss-filter
    penalty has this form): the hypergradient against central finite differences."""
    inner, outer, w0, hypers = _problem("logreg")
    steps, lr, h = 30, 0.3, 1e-6

    def explicit(w, x_p, log_l2):
        return 0.7 * torch.tanh(w).sum() * (x_p**2).sum() - 0.2 * x_p.sum()

    def total(hs):
        w, _ = unroll(inner, w0, hs, steps, lr, keep_every=steps)
        return float(outer(w) + explicit(w, *hs))

    result = rmd(inner, outer, w0, hypers, steps, lr, explicit=explicit)
    assert result.outer == pytest.approx(total(hypers), rel=1e-12)
    plain = rmd(inner, outer, w0, hypers, steps, lr)
    for i, hyper in enumerate(hypers):
        for index in range(hyper.numel()):
            up, down = [t.clone() for t in hypers], [t.clone() for t in hypers]
            up[i].view(-1)[index] += h
            down[i].view(-1)[index] -= h
            fd = (total(up) - total(down)) / (2 * h)
            assert float(result.grads[i].reshape(-1)[index]) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert not torch.allclose(result.grads[0], plain.grads[0])  # the term does move the poisons' gradient

"""Where poisons confined to a feature box can take a binary linear target: the full stationarity condition.

The box-aware threshold τ_box (:func:`audit.maths.poisonability.box_threshold`, eq. B1–B3) is the stationarity
condition projected on the target's weights W: necessary only. This module decides the condition itself for a
two-class softmax regression (docs/maths.md, "Where the box lets poisons reach a target").

Write ``x̃ = [x; 1]``, the target's rows ``[w_k, b_k]`` (k = 0, 1), ``v = [w_0 − w_1, b_0 − b_1]`` and ``t = v·x̃``
(the logit difference). A poison ``(x, y)`` contributes ``∇ℓ = (p − e_y) x̃ᵀ`` with ``p − e_y = s·(1, −1)``,
``s = σ(t) − [y = 0]``: every poison gradient is ``[u; −u]`` with ``u = s·x̃`` in R^{d+1}. With ``b(ε) = g(μ) +
(1 + ε)ρ[W, 0]`` (the clean mean gradient at the target and the regularizer's part, bias unregularized), the target
minimises the poisoned objective iff some poison distribution ν over box × labels gives ``b(ε) + ε E_ν ∇ℓ = 0``
(Gradient Canceling's residual ``r``, lu-kamath-yu-2023 eq. 31–34). Split ``b`` into ``b_a = (b_0 − b_1)/2`` and
``b_s = (b_0 + b_1)/2``: then

    min_ν ‖b + ε E_ν ∇ℓ‖² = 2ε²·dist(−b_a/ε, conv S)² + 2‖b_s‖²,   S = {s_y(t(x))·x̃ : x ∈ box, y ∈ {0, 1}},

the least relative residual ``R(ε)`` any in-box poison set of that weight can leave (relative to ‖b(ε)‖, as
Gradient Canceling's ``relative_residual``). ``b_s`` is out of every poison's reach (the softmax's redundant
direction; a target trained from the clean model has ``b_s ≈ 0``).

**The distance.** Fully corrective Frank–Wolfe (column generation): keep atoms of S, fit the closest point of their
convex hull to ``c = −b_a/ε`` (non-negative least squares with the weights' sum held at 1), add the atom that
maximises ``⟨c − z, a⟩``. Each step gives an upper bound ``‖c − z‖`` and a lower bound ``(⟨d, c⟩ − h_S(d))/‖d‖``
(``d = c − z``, ``h_S`` the support function of S), so the answer is bracketed.

**The support function** ``h_S(d) = max_{x, y} s_y(t)·(d·x̃)``: with ``a = d·x̃``, the pair ``(t, a)`` ranges over a
zonogon (the box's image under two linear maps); for fixed t the objective is linear in a, so the maximum is on
its upper chain for y = 1 (s = σ(t) > 0) and on its lower chain for y = 0 (s = −σ(−t) < 0). Each chain is piecewise
linear with one vertex per feature (features sorted by the slope ``d_j/v_j``, a fractional knapsack), so the search
is one-dimensional in t: a grid over ``[t_min, t_max]`` refined around its best point, then the point x of the box
on the chain at that t.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls
from scipy.special import expit
from torch import nn

from audit.models.structure import convex_linear_layer


@dataclass
class ReachBounds:
    """The least relative residual ``R(ε)`` in-box poisons can leave, bracketed: ``lower ≤ R(ε) ≤ upper``."""

    eps: float
    lower: float
    upper: float
    iterations: int


@dataclass
class ReachThreshold:
    """The smallest budget ε at which poisons in the box can bring the residual to ``delta`` (``tau``; None: not
    within ``eps_max``), with the residual's bracket there; ``unreachable_part`` the share ‖b_s‖ of the residual no
    poison can touch (the softmax's redundant direction)."""

    tau: float | None
    delta: float
    bounds: ReachBounds | None
    eps_max: float
    unreachable_part: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chain(v: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray, upper: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The upper (largest a) or lower chain of the zonogon ``{(v·x̃, d·x̃) : x ∈ box}``: vertices ``t`` and ``a``
    (each (m + 1,), t increasing), the start point x (d,) and the features in the order they move, each from its
    start end to the other (m,)."""
    n = len(lo)
    width = hi - lo
    gt, ga = v[:n] * width, d[:n] * width
    moving = gt != 0
    start = lo.copy()
    start[moving & (gt < 0)] = hi[moving & (gt < 0)]  # t grows as these fall
    still = ~moving
    high_a = ga > 0 if upper else ga < 0
    start[still & high_a] = hi[still & high_a]
    order = np.flatnonzero(moving)
    slope = ga[order] / gt[order]
    order = order[np.argsort(-slope if upper else slope, kind="stable")]
    t0 = float(v[:n] @ start + v[n])
    a0 = float(d[:n] @ start + d[n])
    t = np.concatenate([[t0], t0 + np.cumsum(np.abs(gt[order]))])
    a = np.concatenate([[a0], a0 + np.cumsum(ga[order] * np.sign(gt[order]))])
    return t, a, start, order


def _point_on(chain: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], lo: np.ndarray, hi: np.ndarray, t: float) -> np.ndarray:
    """The point x of the box on ``chain`` at logit difference t."""
    ts, _, start, order = chain
    x = start.copy()
    k = int(np.clip(np.searchsorted(ts, t, side="right") - 1, 0, len(order)))
    done = order[:k]
    x[done] = np.where(start[done] == lo[done], hi[done], lo[done])
    if k < len(order) and ts[k + 1] > ts[k]:
        j = order[k]
        frac = (t - ts[k]) / (ts[k + 1] - ts[k])
        end = hi[j] if start[j] == lo[j] else lo[j]
        x[j] = start[j] + frac * (end - start[j])
    return x


@dataclass
class Atom:
    """A poison ``(x, y)`` of the box and its gradient coordinates ``s_y(t(x))·x̃`` (d + 1,)."""

    x: np.ndarray
    y: int
    u: np.ndarray


def support(v: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray, grid: int = 2049) -> tuple[float, Atom]:
    """``h_S(d)`` and the poison attaining it, for the two-logit target with logit difference ``t = v·x̃`` (module
    docstring): the best of the upper chain with y = 1 and the lower chain with y = 0."""
    best = (-math.inf, Atom(lo.copy(), 1, np.zeros(len(d))))
    for upper, sign in ((True, 1), (False, 0)):
        chain = _chain(v, d, lo, hi, upper)
        ts, av = chain[0], chain[1]

        def value(t: np.ndarray, ts: np.ndarray = ts, av: np.ndarray = av, sign: int = sign) -> np.ndarray:
            s = expit(t) - (1 - sign)
            return s * np.interp(t, ts, av)

        t_lo, t_hi = float(ts[0]), float(ts[-1])
        points = np.union1d(np.linspace(t_lo, t_hi, grid), ts) if t_hi > t_lo else np.array([t_lo])
        if len(points) > 1:  # the grid and the chain's vertices, then a finer grid around the best point
            i = int(np.argmax(value(points)))
            points = np.union1d(np.linspace(points[max(i - 1, 0)], points[min(i + 1, len(points) - 1)], 257), points[i])
        vals = value(points)
        i = int(np.argmax(vals))
        if vals[i] > best[0]:
            x = _point_on(chain, lo, hi, float(points[i]))
            xt = np.append(x, 1.0)
            s = float(expit(v @ xt)) - (1 - sign)
            best = (float(s * (d @ xt)), Atom(x, sign, s * xt))
    return best


def _closest(atoms: list[Atom], c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The convex weights λ over ``atoms`` whose combination is closest to ``c``, and that combination
    (non-negative least squares with a heavily weighted row holding Σλ = 1)."""
    a = np.stack([atom.u for atom in atoms], axis=1)
    heavy = 1e3 * max(1.0, float(np.abs(a).max()), float(np.abs(c).max()))
    lam, _ = nnls(np.vstack([a, np.full((1, a.shape[1]), heavy)]), np.append(c, heavy), maxiter=50 * a.shape[1])
    lam = lam / max(lam.sum(), 1e-300)
    return lam, a @ lam


@dataclass
class _Target:
    """A binary linear target's data for the condition: ``v`` (d + 1,), ``g_a`` the clean gradient's row 0 (row 1 is its
    negative, so it has no ``b_s`` part), the regularizer's parts ``r_a``/``r_s`` (each (d + 1,)), and the box."""

    v: np.ndarray
    g_a: np.ndarray
    r_a: np.ndarray
    r_s: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, target: nn.Module, x: np.ndarray, y: np.ndarray, l2: float, lo: np.ndarray, hi: np.ndarray) -> _Target:
        layer = convex_linear_layer(target)
        if layer is None or layer.out_features != 2:
            raise ValueError("the full reach condition is built for a two-class softmax regression (one nn.Linear with two outputs)")
        w = layer.weight.detach().double().cpu().numpy()
        b = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(2)
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"the target's layer takes {w.shape[1]} inputs, the data has {x.shape[1]} features (preprocessing is not modelled here)")
        xt = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        h = xt @ np.concatenate([w, b[:, None]], axis=1).T
        p = expit(h[:, 0] - h[:, 1])
        s = p - (np.asarray(y) == 0)
        g0 = (s[:, None] * xt).mean(axis=0)  # row 0 of g(μ); row 1 is its negative
        reg = [np.append(l2 * w[k], 0.0) for k in (0, 1)]
        lo_, hi_ = (np.broadcast_to(np.asarray(q, np.float64).reshape(-1), (x.shape[1],)).copy() for q in (lo, hi))
        v = np.append(w[0] - w[1], b[0] - b[1])
        return cls(v, g0, (reg[0] - reg[1]) / 2, (reg[0] + reg[1]) / 2, lo_, hi_)

    def parts(self, eps: float) -> tuple[np.ndarray, np.ndarray, float]:
        """``b_a``, ``b_s`` at ε and ‖b(ε)‖ (the residual's normaliser)."""
        b_a, b_s = self.g_a + (1 + eps) * self.r_a, (1 + eps) * self.r_s
        return b_a, b_s, math.sqrt(2 * float(b_a @ b_a) + 2 * float(b_s @ b_s))


@dataclass
class Mixture:
    """The closest poison distribution found: ``atoms`` with convex ``weights``."""

    atoms: list[Atom]
    weights: np.ndarray


def _bounds(
    problem: _Target, eps: float, stop_below: float | None, stop_above: float | None, tol: float, max_iter: int
) -> tuple[ReachBounds, Mixture]:
    """Column generation for ``R(ε)`` (module docstring), stopped once the bracket is narrower than ``tol`` or lies wholly
    below ``stop_below`` / above ``stop_above``; with the distribution that attains the upper bound."""
    b_a, b_s, norm = problem.parts(eps)
    c = -b_a / eps
    floor = 2 * float(b_s @ b_s)

    def relative(dist: float) -> float:
        return math.sqrt(2 * eps**2 * dist**2 + floor) / max(norm, 1e-300)

    _, atom = support(problem.v, c, problem.lo, problem.hi)
    atoms, lam = [atom], np.ones(1)
    z = atom.u
    lower_dist = 0.0
    it = 0
    for it in range(1, max_iter + 1):
        direction = c - z
        gap_norm = float(np.linalg.norm(direction))
        if gap_norm == 0.0:
            return ReachBounds(eps, relative(0.0), relative(0.0), it), Mixture(atoms, lam)
        h, atom = support(problem.v, direction, problem.lo, problem.hi)
        lower_dist = max(lower_dist, (float(direction @ c) - h) / gap_norm)
        upper = relative(gap_norm)
        lower = min(relative(max(lower_dist, 0.0)), upper)
        if upper - lower <= tol or (stop_below is not None and upper <= stop_below) or (stop_above is not None and lower > stop_above):
            return ReachBounds(eps, lower, upper, it), Mixture(atoms, lam)
        atoms.append(atom)
        lam, z = _closest(atoms, c)
        keep = lam > 0
        if keep.any():
            atoms, lam = [a for a, k in zip(atoms, keep) if k], lam[keep]
    upper = relative(float(np.linalg.norm(c - z)))
    return ReachBounds(eps, min(relative(max(lower_dist, 0.0)), upper), upper, it), Mixture(atoms, lam)


def reach_residual(
    target: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    lo: np.ndarray,
    hi: np.ndarray,
    eps: float,
    tol: float = 1e-3,
    max_iter: int = 400,
    stop: float | None = None,
) -> ReachBounds:
    """The least relative residual ``‖b(ε) + ε E_ν∇ℓ‖ / ‖b(ε)‖`` over poison distributions ν on the box ``[lo, hi]`` ×
    labels, for a two-class softmax regression ``target`` with L2 strength ``l2`` on the clean training set ``(x, y)``
    ((n, d), (n,)), bracketed to ``tol`` (module docstring) — or, with ``stop``, only until the bracket lies wholly on
    one side of it."""
    if eps <= 0:
        raise ValueError(f"eps must be positive (got {eps})")
    return _bounds(_Target.of(target, x, y, l2, lo, hi), eps, stop, stop, tol, max_iter)[0]


def reach_poisons(
    target: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    lo: np.ndarray,
    hi: np.ndarray,
    n_poison: int,
    tol: float = 1e-4,
    max_iter: int = 400,
    passes: int = 5,
) -> tuple[np.ndarray, np.ndarray, ReachBounds]:
    """``n_poison`` poisons of the box (features (m, d), labels (m,)) realising the closest poison distribution at
    ε = n_poison/n — a start for Gradient Canceling (``start: reach``). Its atoms are repeated in proportion to their
    weights (largest remainders); with fewer poisons than atoms that rounding loses much (in d dimensions the
    distribution may need up to d + 1 atoms), so each poison in turn is then replaced by the atom of S that best
    cancels the others' residual (the support function in that direction; kept when the residual falls), in passes
    until none improves (at most ``passes``). Returns the poisons and the bracket of the least residual (the
    distribution's: a lower bound for any n_poison points)."""
    if n_poison <= 0:
        raise ValueError(f"n_poison must be positive (got {n_poison})")
    problem = _Target.of(target, x, y, l2, lo, hi)
    n = len(x)
    bounds, mixture = _bounds(problem, n_poison / n, None, None, tol, max_iter)
    share = mixture.weights * n_poison
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts))[: n_poison - int(counts.sum())]:
        counts[i] += 1
    atoms = [a for a, k in zip(mixture.atoms, counts) for _ in range(k)]
    b_a, _, _ = problem.parts(n_poison / n)
    r = b_a + sum(a.u for a in atoms) / n
    for _ in range(passes):
        improved = False
        for j in range(n_poison):
            others = r - atoms[j].u / n
            _, atom = support(problem.v, -others, problem.lo, problem.hi)
            moved = others + atom.u / n
            if float(moved @ moved) < float(r @ r) * (1 - 1e-9):
                atoms[j], r, improved = atom, moved, True
        if not improved:
            break
    return np.stack([a.x for a in atoms]), np.array([a.y for a in atoms], dtype=np.int64), bounds


def reach_threshold(
    target: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    lo: np.ndarray,
    hi: np.ndarray,
    delta: float = 0.1,
    eps_max: float = 1.0,
    steps: int = 40,
    bisections: int = 8,
    max_iter: int = 400,
) -> ReachThreshold:
    """The smallest ε ≤ ``eps_max`` at which in-box poisons can leave a relative residual ≤ ``delta`` (Gradient Canceling's
    criterion of reaching the target): ε scanned on ``steps`` geometric points from ``eps_max``/1000, then bisected
    ``bisections`` times between the last point found out of reach and the first found in reach. A point counts as in
    reach when the residual's upper bound is ≤ δ (sufficient); the bisection keeps the bracket's lower bound above δ
    on the other side, so the threshold is bracketed to the scan's and bisection's resolution."""
    problem = _Target.of(target, x, y, l2, lo, hi)
    _, b_s, norm = problem.parts(0.0)
    unreachable = math.sqrt(2 * float(b_s @ b_s)) / max(norm, 1e-300)

    def reached(eps: float) -> tuple[bool, ReachBounds]:
        bounds = _bounds(problem, eps, delta, delta, 1e-4, max_iter)[0]
        return bounds.upper <= delta, bounds

    grid = np.geomspace(eps_max / 1000, eps_max, steps)
    below = 0.0
    for eps in grid:
        ok, bounds = reached(float(eps))
        if ok:
            above = float(eps)
            for _ in range(bisections):
                mid = math.sqrt(below * above) if below > 0 else above / 2
                ok_mid, b_mid = reached(mid)
                if ok_mid:
                    above, bounds = mid, b_mid
                else:
                    below = mid
            return ReachThreshold(above, delta, bounds, eps_max, unreachable)
        below = float(eps)
    return ReachThreshold(None, delta, None, eps_max, unreachable)

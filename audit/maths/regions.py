"""Acceptance regions of the sphere and slab sanitisers and linear optimisation over them.

The region of class ``y`` (Steinhardt, Koh & Liang 2017, §3) is

    F_y = {x ∈ [lo, hi] : ‖x − μ_y‖₂ ≤ r_y,  |⟨x − μ_y, v_y⟩| ≤ s_y}

(the sphere, the slab and the feature box; either of the first two may be absent). The
defenses of :mod:`audit.defenses.sanitizers` filter with it; the min-max attack and the
certified bound (:mod:`audit.maths.certificate`) need ``max_{x ∈ F_y} ⟨q, x⟩`` — a linear
objective over a convex set — which :func:`max_linear` solves through its two-dimensional
Lagrange dual (exact up to the solver's tolerance; the dual value is a certified upper
bound whatever the tolerance):

    max_{u ∈ [a, b]} ⟨q, u⟩ − (α/2)(‖u‖² − r²) − β⟨v, u⟩ + |β|s  ≥  max over the region,

minimised over α ≥ 0 and β, with ``u = x − μ_y``, ``[a, b] = [lo − μ_y, hi − μ_y]``; for fixed
(α, β) the inner maximiser is ``u = clip((q − βv)/α, a, b)`` coordinate by coordinate. The
dual is minimised exactly over α for each β (‖u(α)‖ = r by bisection, or α = 0 when the
box's maximiser lies in the ball) and the result, convex in β, by a golden-section search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar


@dataclass(frozen=True)
class AcceptanceRegion:
    """Per class ``y``: ``{x : ‖x − μ_y‖ ≤ r_y, |⟨x − μ_y, v_y⟩| ≤ s_y}`` (either part optional).

    Attributes
    ----------
    centroids : ndarray, shape (c, d)
    radii : ndarray, shape (c,), or None
        Sphere radii ``r_y`` (None: no sphere).
    directions : ndarray, shape (c, d), or None
        Unit slab directions ``v_y`` (None: no slab).
    widths : ndarray, shape (c,), or None
        Slab half-widths ``s_y``.
    """

    centroids: np.ndarray
    radii: np.ndarray | None = None
    directions: np.ndarray | None = None
    widths: np.ndarray | None = None

    def shrunk(self, margin: float) -> AcceptanceRegion:
        """The same region with radii and slab widths times ``1 − margin``: points found on its
        boundary stay inside the original after rounding (float32 storage, the defense's arithmetic)."""
        return AcceptanceRegion(
            self.centroids,
            None if self.radii is None else self.radii * (1 - margin),
            self.directions,
            None if self.widths is None else self.widths * (1 - margin),
        )

    def accepts(self, x: np.ndarray, y: np.ndarray, slack: float = 0.0) -> np.ndarray:
        """Boolean mask (n,): which points ``(x, y)`` (x of shape (n, d)) lie in their class's region (``slack``: relative tolerance)."""
        y = np.asarray(y, dtype=np.int64)
        keep = np.ones(len(y), dtype=bool)
        offset = np.asarray(x, dtype=np.float64) - self.centroids[y]
        if self.radii is not None:
            keep &= np.linalg.norm(offset, axis=1) <= self.radii[y] * (1 + slack)
        if self.directions is not None and self.widths is not None:
            keep &= np.abs(np.einsum("nd,nd->n", offset, self.directions[y])) <= self.widths[y] * (1 + slack)
        return keep

    def project(self, x: np.ndarray, y: int, lo: np.ndarray | None, hi: np.ndarray | None, iterations: int = 200) -> np.ndarray:
        """The point of class ``y``'s region ∩ the box ``[lo, hi]`` nearest to ``x`` (d,) — Dykstra's
        alternating projections onto the ball, the slab and the box (each exact), ``iterations`` rounds."""
        center = self.centroids[y]
        if self.radii is None and self.directions is not None and self.widths is not None and lo is not None and hi is not None:
            return _project_slab_box(np.asarray(x, dtype=np.float64), center, self.directions[y], float(self.widths[y]), lo, hi)
        sets = []
        if self.radii is not None:
            radius = float(self.radii[y])

            def ball(z: np.ndarray) -> np.ndarray:
                off = z - center
                norm = float(np.linalg.norm(off))
                return z if norm <= radius else center + off * (radius / norm)

            sets.append(ball)
        if self.directions is not None and self.widths is not None:
            v, width = self.directions[y], float(self.widths[y])

            def slab(z: np.ndarray) -> np.ndarray:
                t = float((z - center) @ v)
                return z if abs(t) <= width else z - (t - np.sign(t) * width) * v

            sets.append(slab)
        if lo is not None and hi is not None:
            sets.append(lambda z: np.clip(z, lo, hi))
        z = np.asarray(x, dtype=np.float64).copy()
        corrections = [np.zeros_like(z) for _ in sets]
        for _ in range(iterations):
            previous = z
            for i, proj in enumerate(sets):
                moved = proj(z + corrections[i])
                corrections[i] = z + corrections[i] - moved
                z = moved
            if np.max(np.abs(z - previous)) < 1e-10:
                break
        # Dykstra's iterates may sit a rounding error outside the ball or slab: scale the offset
        # towards μ_y (inside both, and inside the box as a mean of points in it) until exactly inside
        offset, t = z - center, 1.0
        if self.radii is not None:
            norm = float(np.linalg.norm(offset))
            t = min(t, float(self.radii[y]) / norm if norm > 0 else 1.0)
        if self.directions is not None and self.widths is not None:
            along = abs(float(offset @ self.directions[y]))
            t = min(t, float(self.widths[y]) / along if along > 0 else 1.0)
        z = z if t >= 1.0 else center + offset * (t * (1 - 1e-12))
        return np.clip(z, lo, hi) if lo is not None and hi is not None else z  # exact box (μ_y in the box: a no-op)


def _project_slab_box(x: np.ndarray, center: np.ndarray, v: np.ndarray, width: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Exact projection of ``x`` (d,) onto ``{|⟨z − μ, v⟩| ≤ s} ∩ [lo, hi]``: by the KKT conditions it is
    ``clip(x − λv, lo, hi)`` for the one λ that puts ``⟨z − μ, v⟩`` on the violated face (λ = 0 when
    ``clip(x)`` already lies in the slab); ``⟨clip(x − λv) − μ, v⟩`` falls monotonically in λ, so λ is
    found by bisection (μ lies in the box, so the face is reachable)."""

    def along(lam: float) -> float:
        return float((np.clip(x - lam * v, lo, hi) - center) @ v)

    t0 = along(0.0)
    if abs(t0) <= width:
        return np.clip(x, lo, hi)
    face = width if t0 > 0 else -width
    low, high = (0.0, 1.0) if t0 > 0 else (-1.0, 0.0)
    while (along(high) > face) if t0 > 0 else (along(low) < face):  # widen the bracket until it holds the face
        low, high = (high, 2.0 * high) if t0 > 0 else (2.0 * low, low)
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if along(mid) > face else (low, mid)
    z = np.clip(x - (high if t0 > 0 else low) * v, lo, hi)  # the end on the feasible side
    return z


def class_centroids(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class means, shape (c, d); a class without points gets the overall mean."""
    overall = x.mean(axis=0)
    return np.stack([x[y == k].mean(axis=0) if np.any(y == k) else overall for k in range(n_classes)])


def slab_directions(centroids: np.ndarray) -> np.ndarray:
    """Unit ``v_y``: binary ``μ_1 − μ_0`` for both classes; multiclass ``μ_y − mean of the others``."""
    c = len(centroids)
    if c == 2:
        diff = centroids[1] - centroids[0]
        rows = np.stack([diff, diff])
    else:
        rows = np.stack([centroids[k] - np.delete(centroids, k, axis=0).mean(axis=0) for k in range(c)])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class LinearMax:
    """``max_{x ∈ F_y} ⟨q, x⟩``: a feasible maximiser ``x`` (d,), its value ``value = ⟨q, x⟩`` and the
    dual value ``bound ≥`` the true maximum (``bound − value`` is the certified gap)."""

    x: np.ndarray
    value: float
    bound: float


def max_linear(q: np.ndarray, region: AcceptanceRegion, y: int, lo: np.ndarray | None, hi: np.ndarray | None, refine: int = 30) -> LinearMax:
    """Maximise ``⟨q, x⟩`` over class ``y``'s region ∩ the box (module docstring: the dual).

    Parameters
    ----------
    q : ndarray, shape (d,)
    region : AcceptanceRegion
    y : int
    lo, hi : ndarray, shape (d,), or None
        The feature box (None: unbounded — then a sphere is needed for a finite maximum).
    refine : int
        Projected ascent steps that polish the feasible maximiser when the dual's leaves a gap.
    """
    q = np.asarray(q, dtype=np.float64)
    mu = region.centroids[y]
    d = len(q)
    a = (np.broadcast_to(lo, (d,)) - mu) if lo is not None else np.full(d, -np.inf)
    b = (np.broadcast_to(hi, (d,)) - mu) if hi is not None else np.full(d, np.inf)
    r = float(region.radii[y]) if region.radii is not None else None
    v = region.directions[y] if region.directions is not None and region.widths is not None else None
    s = float(region.widths[y]) if v is not None and region.widths is not None else 0.0
    if r is None and (not np.all(np.isfinite(a)) or not np.all(np.isfinite(b))):
        raise ValueError("max_linear: without a sphere the feature box must be finite")

    def inner(alpha: float, beta: float) -> np.ndarray:
        g = q - beta * v if v is not None else q
        if alpha <= 0.0:
            return np.where(g > 0, b, a)
        return np.clip(g / alpha, a, b)

    def best_alpha(beta: float) -> float:
        """argmin over α ≥ 0 of the dual (convex in α): 0 when the box's maximiser lies in the ball,
        else the α with ‖u(α)‖ = r (‖u(α)‖ falls as α grows), found by bisection on log α."""
        if r is None:
            return 0.0
        u0 = inner(0.0, beta)
        if np.all(np.isfinite(u0)) and float(u0 @ u0) <= r * r:
            return 0.0
        low, high = -40.0, 40.0
        for _ in range(60):  # 80/2⁶⁰ in log α
            mid = 0.5 * (low + high)
            u = inner(float(np.exp(mid)), beta)
            low, high = (mid, high) if float(u @ u) > r * r else (low, mid)
        return float(np.exp(high))

    def dual(beta: float) -> float:
        alpha = best_alpha(beta)
        u = inner(alpha, beta)
        value = float(q @ u) - (0.5 * alpha * (float(u @ u) - r * r) if r is not None else 0.0)
        return value + (abs(beta) * s - beta * float(v @ u) if v is not None else 0.0)

    if v is not None:  # the dual minimised over α is convex in β: golden section over a wide bracket
        scale = (float(np.linalg.norm(q)) + 1.0) * 1e3
        best = minimize_scalar(dual, bounds=(-scale, scale), method="bounded", options={"xatol": 1e-10 * scale, "maxiter": 200})
        beta = float(best.x)
        bound = min(float(best.fun), dual(0.0))
    else:
        beta = 0.0
        bound = dual(0.0)
    u = inner(best_alpha(beta), beta)
    bound += float(q @ mu)  # the dual is over u = x − μ_y
    x = region.project(mu + u, y, lo, hi)  # the dual's maximiser, made exactly feasible
    # at a kink of the dual (an inactive sphere, a vertex of box ∩ slab) that point can fall short:
    # a few projected ascent steps of shrinking length, keeping the best feasible point
    step = (2.0 * r if r is not None else float(np.linalg.norm(b - a))) / max(float(np.linalg.norm(q)), 1e-30)
    best_x, best_value = x, float(q @ x)
    for _ in range(refine):
        if bound - best_value <= 1e-9 * (1.0 + abs(bound)):
            break
        x = region.project(x + step * q, y, lo, hi)
        if float(q @ x) > best_value:
            best_x, best_value = x, float(q @ x)
        step *= 0.7
    return LinearMax(x=best_x, value=best_value, bound=max(bound, best_value))


def fit_region(x: np.ndarray, y: np.ndarray, n_classes: int, level: float, sphere: bool, slab: bool) -> AcceptanceRegion:
    """The sanitisers' region from reference points ``(x, y)`` (x (n, d)): class centroids, and the
    ``level`` quantile per class of the distances (sphere) and of the slab projections (slab)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.int64)
    mu = class_centroids(x, y, n_classes)
    offset = x - mu[y]

    def per_class(score: np.ndarray) -> np.ndarray:
        return np.array([np.quantile(score[y == k], level) if np.any(y == k) else np.inf for k in range(n_classes)])

    radii = per_class(np.linalg.norm(offset, axis=1)) if sphere else None
    directions = slab_directions(mu) if slab else None
    widths = per_class(np.abs(np.einsum("nd,nd->n", offset, directions[y]))) if directions is not None else None
    return AcceptanceRegion(mu, radii, directions, widths)


def project_many(
    region: AcceptanceRegion, x: torch.Tensor, y: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None, iterations: int = 50
) -> torch.Tensor:
    """Each row of ``x`` (m, d) onto its label's region ∩ the box (labels ``y`` (m,)): Dykstra's
    alternating projections, vectorised over the rows, then scaled towards μ_y until exactly
    inside the ball and slab and clipped to the box (as :meth:`AcceptanceRegion.project`)."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=x.dtype, device=x.device)

    center = tensor(region.centroids)[y]
    radius = tensor(region.radii)[y] if region.radii is not None else None
    has_slab = region.directions is not None and region.widths is not None
    v = tensor(region.directions)[y] if region.directions is not None and has_slab else None
    width = tensor(region.widths)[y] if region.widths is not None and has_slab else None

    def ball(z: torch.Tensor) -> torch.Tensor:
        assert radius is not None
        off = z - center
        norm = off.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return torch.where(norm > radius[:, None], center + off * (radius[:, None] / norm), z)

    def slab(z: torch.Tensor) -> torch.Tensor:
        assert v is not None and width is not None
        t = ((z - center) * v).sum(dim=1, keepdim=True)
        excess = t - torch.sign(t) * width[:, None]
        return torch.where(t.abs() > width[:, None], z - excess * v, z)

    sets = ([ball] if radius is not None else []) + ([slab] if has_slab else [])
    if lo is not None and hi is not None:
        sets.append(lambda z: torch.maximum(torch.minimum(z, hi), lo))
    z = x.detach().clone()
    corrections = [torch.zeros_like(z) for _ in sets]
    for _ in range(iterations):
        for i, proj in enumerate(sets):
            moved = proj(z + corrections[i])
            corrections[i] = z + corrections[i] - moved
            z = moved
    off = z - center
    t = torch.ones(len(z), dtype=x.dtype, device=x.device)
    if radius is not None:
        t = torch.minimum(t, radius / off.norm(dim=1).clamp_min(1e-30))
    if v is not None and width is not None:
        t = torch.minimum(t, width / (off * v).sum(dim=1).abs().clamp_min(1e-30))
    z = torch.where(t[:, None] < 1, center + off * (t[:, None] * (1 - 1e-6)), z)
    return torch.maximum(torch.minimum(z, hi), lo) if lo is not None and hi is not None else z


SANITISERS: dict[str, tuple[bool, bool]] = {"sphere": (True, False), "slab": (False, True), "sphere_slab": (True, True)}
"""Sanitiser name → (sphere, slab): the tests each applies."""


def sanitiser_level(rate: float, quantile: float | None = None) -> float:
    """The quantile a sanitiser's thresholds are taken at: ``quantile``, else ``1/(1 + rate)`` (the
    clean share of the mixed set at the assumed poison rate)."""
    return quantile if quantile is not None else 1.0 / (1.0 + rate)


def sanitiser_region(kind: str, x: np.ndarray, y: np.ndarray, n_classes: int, rate: float, quantile: float | None = None) -> AcceptanceRegion:
    """The region the sanitiser ``kind`` (``sphere``, ``slab``, ``sphere_slab``) fits on ``(x, y)`` at
    :func:`sanitiser_level` — what the defense filters with and the defense-aware attacks stay inside."""
    sphere, slab = SANITISERS[kind]
    return fit_region(x, y, n_classes, sanitiser_level(rate, quantile), sphere, slab)

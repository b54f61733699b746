"""Report figures as inline SVG strings (matplotlib, headless, reproducible ids)."""

from __future__ import annotations

import io
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from audit.report.recommend import CandidateSummary  # noqa: E402

plt.rcParams.update(
    {
        "text.parse_math": False,
        "svg.hashsalt": "poison-audit",
        "svg.fonttype": "none",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


#: line styles and markers that tell lines apart in black and white (the compliance PDF is printed)
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")


def _style(i: int) -> dict[str, Any]:
    """The i-th line's dash pattern and marker (distinct without colour)."""
    return {"linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _panels(n: int) -> tuple[plt.Figure, Any, int]:
    """A figure of ``n`` panels, at most three a row, sharing the y axis: the figure, its axes grid and the columns."""
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.2 * cols, 3.2 * math.ceil(n / cols)), squeeze=False, sharey=True)
    return fig, axes, cols


def _finish_panels(fig: plt.Figure, axes: Any, n: int, cols: int) -> str:
    """Blank the unused panels, a legend in the first, tight layout: the SVG."""
    for j in range(n, axes.shape[0] * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    return _to_svg(fig)


def _to_svg(fig: plt.Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype: it is inlined in HTML
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"', r"<svg \1", svg, count=1)


def budget_curves(
    summaries: list[CandidateSummary],
    attacks: list[str],
    budgets: list[float],
    defense: str,
    metric: str,
    recommended: str | None,
) -> str:
    """Test metric against budget (ε = 0 is the clean model), one panel per attack, one line per candidate."""
    n = len(attacks)
    fig, axes, cols = _panels(n)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(summaries), 1)))
    xs = [0.0, *budgets]
    for i, attack in enumerate(attacks):
        ax = axes[i // cols][i % cols]
        for k, (color, s) in enumerate(zip(colors, summaries)):
            ys, es = [s.clean_test], [s.clean_test_std]
            for eps in budgets:
                st = s.stats.get((attack, eps, defense))
                ys.append(st.poisoned_test if st else math.nan)
                es.append(st.poisoned_test_std if st else 0.0)
            style = {"lw": 2.4} if s.key == recommended else {"lw": 1.2}
            ax.errorbar([100 * x for x in xs], ys, yerr=es, ms=3, capsize=2, color=color, label=s.label, **_style(k), **style)
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("poison budget ε (%)")
        if i % cols == 0:
            ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, n, cols)


def worst_case_heatmap(summaries: list[CandidateSummary], budgets: list[float], unit: str) -> str:
    """Worst-case (over attacks) test damage per candidate × budget, annotated."""
    data = np.array([[s.worst_damage_test.get(eps, math.nan) for eps in budgets] for s in summaries])
    fig, ax = plt.subplots(figsize=(1.2 * len(budgets) + 2.6, 0.42 * len(summaries) + 1.2))
    finite = data[np.isfinite(data)]
    vmax = float(finite.max()) if finite.size else 1.0
    im = ax.imshow(
        np.nan_to_num(data, nan=0.0), cmap="Reds", vmin=min(0.0, float(finite.min()) if finite.size else 0.0), vmax=max(vmax, 1e-9), aspect="auto"
    )
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            value = data[i, j]
            text = "n/a" if not math.isfinite(value) else (f"{value:.1f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}")
            dark = math.isfinite(data[i, j]) and data[i, j] > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(budgets)), [f"{100 * b:g}%" for b in budgets])
    ax.set_yticks(range(len(summaries)), [s.label for s in summaries])
    ax.set_xlabel("poison budget ε")
    fig.colorbar(im, ax=ax, label=f"worst-case {unit}")
    fig.tight_layout()
    return _to_svg(fig)


def gc_drop_vs_budget(series: list[dict], budgets: list[float], unit: str) -> str:
    """GC test damage against budget per candidate, with each candidate's τ_ρ(2) of its GradPC targets as markers.

    ``series``: [{"label", "damage": {ε: value}, "taus": [(ε_w, τ or None)]}]
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(series), 1)))
    xmax = 100 * max(budgets) * 1.25
    for color, s in zip(colors, series):
        xs = [0.0] + [100 * e for e in budgets]
        ys = [0.0] + [s["damage"].get(e, math.nan) for e in budgets]
        ax.plot(xs, ys, marker="o", ms=3, color=color, label=s["label"])
        for eps_w, tau in s["taus"]:
            if tau is not None and 0 <= 100 * tau <= xmax:
                ax.axvline(100 * tau, color=color, ls=":", lw=1)
                ax.text(100 * tau, ax.get_ylim()[1], f" τ(ε_w={eps_w:g})", color=color, fontsize=6, rotation=90, va="top")
    ax.set_xlim(0, xmax)
    ax.set_xlabel("poison budget ε (%)")
    ax.set_ylabel(f"Gradient Canceling {unit}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _to_svg(fig)


def gc_learning_curves(curves: dict[float, list[tuple[str, list[tuple[int, float]]]]]) -> str:
    """‖g(χ)‖ / ‖g(μ)‖ against GC epoch: one panel per budget, one line per candidate (paper's Fig. 3)."""
    budgets = sorted(curves)
    fig, axes = plt.subplots(1, len(budgets), figsize=(3.4 * len(budgets), 2.8), squeeze=False, sharey=True)
    for ax, eps in zip(axes[0], budgets):
        colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(curves[eps]), 1)))
        for color, (label, points) in zip(colors, curves[eps]):
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], color=color, label=label, lw=1.2)
        ax.set_yscale("log")
        ax.set_title(f"ε = {100 * eps:g}%", fontsize=9)
        ax.set_xlabel("GC epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("‖g(χ)‖ relative to start")
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _to_svg(fig)


def defense_curves(panels: dict[str, dict[str, dict[float, float]]], clean: float, budgets: list[float], metric: str) -> str:
    """Test metric against budget per defense (one panel per attack) for one candidate; ε = 0 is the clean model."""
    attacks = list(panels)
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.0 * len(attacks), 3.1), squeeze=False, sharey=True)
    for ax, attack in zip(axes[0], attacks):
        colors = plt.cm.tab10(np.arange(len(panels[attack])))
        for k, (color, (defense, values)) in enumerate(zip(colors, panels[attack].items())):
            xs = [0.0] + [100 * e for e in budgets]
            ax.plot(xs, [clean] + [values.get(e, math.nan) for e in budgets], ms=3, color=color, label=defense, **_style(k))
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("poison budget ε (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric}")
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _to_svg(fig)


def poison_grid(clean: np.ndarray, poisons: np.ndarray, image_shape: tuple[int, ...], lo: float, hi: float) -> str:
    """Clean points, their poisons and |poison − clean| as images (TGDA paper, Fig. 5), as SVG."""
    return _to_svg(poison_grid_figure(clean, poisons, image_shape, lo, hi))


def poison_grid_figure(clean: np.ndarray, poisons: np.ndarray, image_shape: tuple[int, ...], lo: float, hi: float) -> plt.Figure:
    """The figure of :func:`poison_grid`: one column per point, rows clean / poison / |change|."""
    k = len(poisons)
    fig, axes = plt.subplots(3, k, figsize=(1.1 * k, 3.6), squeeze=False)
    channels = image_shape[0]

    def show(ax: plt.Axes, flat: np.ndarray, **kw: object) -> None:
        img = flat.reshape(image_shape)
        img = img[0] if channels == 1 else np.transpose(img, (1, 2, 0))
        if channels != 1:
            img = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
            kw = {}
        ax.imshow(img, interpolation="nearest", **kw)  # type: ignore[arg-type]  # torch/numpy stubs
        ax.set_xticks([])
        ax.set_yticks([])

    for j in range(k):
        change = np.abs(poisons[j] - clean[j])
        show(axes[0][j], clean[j], cmap="gray", vmin=lo, vmax=hi)
        show(axes[1][j], poisons[j], cmap="gray", vmin=lo, vmax=hi)
        show(axes[2][j], change if channels == 1 else change.reshape(image_shape).max(axis=0).reshape(-1), cmap="magma", vmin=0, vmax=hi - lo)
        axes[2][j].set_xlabel(f"max {change.max():.2f}", fontsize=7)
    for row, label in enumerate(("clean", "poison", "|change|")):
        axes[row][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def policy_curves(error: dict[str, dict[float, float]], lam: dict[str, dict[float, float]], norm: dict[str, dict[float, float]], metric: str) -> str:
    """λ under attack (carnerero-cano-2021, Fig. 2) as SVG: see :func:`policy_figure`."""
    return _to_svg(policy_figure(error, lam, norm, metric))


def policy_figure(
    error: dict[str, dict[float, float]], lam: dict[str, dict[float, float]], norm: dict[str, dict[float, float]], metric: str
) -> plt.Figure:
    """Three panels over the poisoning fraction: test ``metric`` per defender policy (Fig. 2 a–c),
    λ per policy that learns it, and ‖w‖² of the retrained models (Fig. 2 d–f). Keys: budget ε (0 = clean)."""
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.3))
    colors = plt.cm.tab10(np.arange(10))
    panels = ((axes[0], error, f"test {metric}"), (axes[1], lam, "λ  (ρ = e^λ / N)"), (axes[2], norm, "‖w‖²"))
    labels = list(dict.fromkeys([*error, *lam, *norm]))
    for ax, series, ylabel in panels:
        for label, points in series.items():
            xs = sorted(points)
            style = {"lw": 2.4} if "RMD" in label else {"lw": 1.2}
            ax.plot([100 * x for x in xs], [points[x] for x in xs], marker="o", ms=3, color=colors[labels.index(label) % 10], label=label, **style)
        ax.set_xlabel("poisoning fraction ε (%)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7, frameon=False)
    axes[1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def adaptive_bars(rows: list[dict], unit: str) -> str:
    """Per filtering defense (panels: budgets): test damage of the worst non-adaptive attack beside the
    worst adaptive one, with the undefended worst case as a line. ``rows``: [{"defense", "budget"
    (label), "plain", "adaptive", "undefended"}] (floats or NaN)."""
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(max(3.2, 0.9 * len({r["defense"] for r in rows}) + 1.6) * len(budgets), 3.0), squeeze=False, sharey=True
    )
    for ax, budget in zip(axes[0], budgets):
        mine = [r for r in rows if r["budget"] == budget]
        xs = np.arange(len(mine))
        ax.bar(xs - 0.2, [r["plain"] for r in mine], 0.4, color="#9ab", label="non-adaptive")
        ax.bar(xs + 0.2, [r["adaptive"] for r in mine], 0.4, color="#c44", label="adaptive")
        undefended = [r["undefended"] for r in mine if math.isfinite(r["undefended"])]
        if undefended:
            ax.axhline(undefended[0], color="k", ls="--", lw=1, label="no defense (worst case)")
        ax.set_xticks(xs, [r["defense"] for r in mine], rotation=20, fontsize=7)
        ax.set_title(f"ε = {budget}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(f"test {unit}")
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _to_svg(fig)


def bracket(series: dict, budgets: list[float]) -> str:
    """The bracket for a convex victim: per defense (none: the feature box; a sanitiser: its oracle
    region), the clean objective L_c + (1 + ε)(ρ/2)‖W‖² of the worst attack found (solid) and the
    certified bound U* (dashed) against the budget; the clean model's objective as a grey line."""
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    colors = plt.cm.tab10(np.arange(max(len(series["defenses"]), 1)))
    for color, (defense, s) in zip(colors, series["defenses"].items()):
        xs = [100 * e for e in budgets]
        ax.plot(xs, [s["found"].get(e, math.nan) for e in budgets], marker="o", ms=3, color=color, label=f"worst attack found ({defense})")
        ax.plot(xs, [s["bound"].get(e, math.nan) for e in budgets], marker="^", ms=3, ls="--", color=color, label=f"certified bound U* ({defense})")
    if series.get("clean") is not None:
        ax.axhline(series["clean"], color="0.5", lw=1, label="clean model")
    ax.set_xlabel("poison budget ε (%)")
    ax.set_ylabel("L_c + (1+ε)ρ/2‖W‖² (clean training loss)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _to_svg(fig)


def width_curves(
    widths: list[int], clean: list[float], clean_ci: list[float], series: dict[str, tuple[list[float], list[float]]], metric: str, best: int | None
) -> str:
    """Test metric against width (log scale): the clean model and one line per ``attack @ ε`` with a
    95 % band over seeds; ``best``: the width of the best worst case, marked (Wang et al. 2021, §5)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(widths, clean, color="black", lw=2.0, marker="o", ms=4, label="clean")
    lo = [m - e for m, e in zip(clean, clean_ci)]
    hi = [m + e for m, e in zip(clean, clean_ci)]
    ax.fill_between(widths, lo, hi, color="0.85")
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(series), 1)))
    for k, (color, (label, (means, half))) in enumerate(zip(colors, series.items())):
        ax.errorbar(widths, means, yerr=half, color=color, ms=3.5, capsize=2, lw=1.2, label=label, **_style(k + 1))
    if best is not None:
        ax.axvline(best, color="0.3", lw=0.8, ls=":")
        ax.annotate("best worst case", (best, ax.get_ylim()[0]), fontsize=7, rotation=90, va="bottom", ha="right")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width (hidden units)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return _to_svg(fig)


#: the certificates' names in figures and tables
CERTIFICATE_LABELS = {
    "dpa": "DPA (Levine & Feizi 2021)",
    "roe": "DPA + run-off (Rezaei et al. 2023)",
    "fa": "Finite Aggregation (Wang et al. 2022)",
    "fa_roe": "FA + run-off (Rezaei et al. 2023)",
}


def certified_curves(panels: list[dict[str, Any]]) -> str:
    """Certified accuracy (%) against the radius (poisoned points), one panel per (candidate, defense): a step
    line per certificate and, at each budget's point count, the defended accuracy under the worst attack found
    (which no valid certificate may exceed). Each panel: ``{"title", "curves": {name: [acc at r = 0, 1, …]},
    "empirical": [(points, accuracy)]}``."""
    n = len(panels)
    fig, axes, cols = _panels(n)
    for i, panel in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for k, (name, curve) in enumerate(panel["curves"].items()):
            ax.step(
                range(len(curve)), curve, where="post", linestyle=LINESTYLES[k % len(LINESTYLES)], lw=1.4, label=CERTIFICATE_LABELS.get(name, name)
            )
        if panel["empirical"]:
            xs, ys = zip(*panel["empirical"])
            ax.plot(xs, ys, "kx", ms=7, mew=1.6, label="worst attack found (defended)")
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("radius r (poisoned points)")
        if i % cols == 0:
            ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, n, cols)

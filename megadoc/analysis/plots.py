"""PNG plots of the papers' figures: loss curves with fitted power laws, and the search grid.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display) and written
through megadoc.fs, so the path may be gs://.
"""
from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from megadoc import fs
from megadoc.analysis import scaling, search


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    fs.write_bytes(path, buf.getvalue())


def _series(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]):
    """(name, color, x, y) of each curve: x and y as float arrays, one color per curve."""
    for i, (name, (x, y)) in enumerate(curves.items()):
        yield name, f"C{i}", np.asarray(x, float), np.asarray(y, float)


def plot_scaling(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, *,
                 xlabel: str, ylabel: str = "validation loss",
                 title: str = "") -> dict[str, scaling.PowerLaw]:
    """One series per name (e.g. per recipe: loss vs generations; or ensemble loss vs members),
    each with its fitted A / x^B + C and asymptote when it has at least 3 points.
    Returns the fitted laws by name."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    laws = {}
    for name, color, x, y in _series(curves):
        ax.plot(x, y, "o", color=color, label=name)
        if len(x) >= 3:
            law = laws[name] = scaling.fit_power_law(x, y)
            grid = np.geomspace(x.min(), x.max() * 4, 200)
            ax.plot(grid, law(grid), "-", color=color, alpha=0.8,
                    label=f"{name}: {law.A:.3g}/x^{law.B:.3g} + {law.C:.3g}")
            ax.axhline(law.C, color=color, linestyle="--", alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return laws


def plot_search(grid: search.Grid, results: Sequence[tuple[dict, float]], path: str, *,
                x_axis: str = "lr", y_axis: str = "weight_decay", best: dict | None = None) -> None:
    """Heat map over two axes of the grid; each cell shows the lowest loss among the runs at
    those two values (other axes free), blank where nothing ran; the best point is boxed in red."""
    axes = dict(grid.axes)
    for name in (x_axis, y_axis):
        if name not in axes:
            raise ValueError(f"plot_search: {name!r} is not an axis of the grid {grid.names}")
    xs, ys = axes[x_axis], axes[y_axis]
    cells = np.full((len(ys), len(xs)), np.nan)
    for point, loss in results:
        if point.get(x_axis) in xs and point.get(y_axis) in ys and math.isfinite(loss):
            j, i = xs.index(point[x_axis]), ys.index(point[y_axis])
            cells[i, j] = loss if np.isnan(cells[i, j]) else min(cells[i, j], loss)

    fig = Figure(figsize=(1.2 * len(xs) + 2.5, 0.8 * len(ys) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(cells), cmap="viridis_r", origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label="best loss")
    mid = np.nanmean(cells) if np.isfinite(cells).any() else 0.0
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(cells[i, j]):  # dark text on the light (low-loss) cells
                ax.text(j, i, f"{cells[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="k" if cells[i, j] <= mid else "w")
    if best is not None:
        j, i = xs.index(best[x_axis]), ys.index(best[y_axis])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red",
                               linewidth=2.5))
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x_axis)
    ax.set_ylabel(y_axis)
    ax.set_title(f"{len(results)} runs")
    _save(fig, path)


def plot_generations(rows: Sequence[Mapping], path: str, *, baseline_recipe: str = "real") -> None:
    """Loss against generations per document, one line per recipe, the real-only baseline as a
    horizontal line (the megadocs paper's Figure 5). Hollow markers: points not certified."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    recipes = sorted({r["recipe"] for r in rows} - {baseline_recipe})
    for i, recipe in enumerate(recipes):
        mine = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["generations"])
        x = [r["generations"] for r in mine]
        ax.plot(x, [r["loss"] for r in mine], "-", color=f"C{i}", label=recipe)
        for r in mine:
            ax.plot(r["generations"], r["loss"], "o", color=f"C{i}",
                    markerfacecolor=f"C{i}" if r["certified"] else "none")
    for r in rows:
        if r["recipe"] == baseline_recipe:
            ax.axhline(r["loss"], color="k", linestyle="--", label="real only")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generations per document")
    ax.set_ylabel("validation loss")
    ax.set_title("best loss per count (hollow: not certified)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_accuracy_vs_tokens(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                            baselines: Mapping[str, float], path: str, *,
                            title: str = "") -> dict[str, tuple[float, float]]:
    """Accuracy against synthetic tokens on a log axis, one series per name (e.g. closed-book,
    RAG), each with its log-linear fit acc = a + b·log10(tokens) when it has 2+ points, and the
    base model's accuracy per name as a dashed line. Returns the fits {name: (a, b)}."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    fits = {}
    for name, color, x, y in _series(curves):
        x, y = x[x > 0], y[x > 0]  # a volume whose generations all failed has no log position
        ax.plot(x, y, "o", color=color, label=name)
        if len(set(x)) >= 2:
            b, a = np.polyfit(np.log10(x), y, 1)
            fits[name] = (float(a), float(b))
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(grid, a + b * np.log10(grid), "-", color=color, alpha=0.6,
                    label=f"{name}: {a:.3f} + {b:.3f}·log10(tokens)")
        if name in baselines:
            ax.axhline(baselines[name], color=color, linestyle="--", alpha=0.6,
                       label=f"{name}, base model")
    ax.set_xscale("log")
    ax.set_xlabel("synthetic training tokens")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path)
    return fits

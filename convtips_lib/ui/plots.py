"""Plots every lesson shares: training curves, confusion matrices, image grids, bars. Each returns its Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core.compat import renamed_kwargs

__all__ = ["plot_history", "plot_confusion", "show_images", "plot_bars", "plot_heatmap", "plot_lines", "plot_cost",
           "plot_forest", "plot_gallery", "plot_intervals", "plot_estimates", "plot_pr_curves", "plot_boxes"]

VERDICT_COLOURS = {"supported": "tab:green", "refuted": "tab:red", "inconclusive": "tab:orange",
                   "undecided": "tab:gray"}


def plot_history(hist: pd.DataFrame, metrics=("train_loss", "valid_loss"), title: str = "", by: str | None = None):
    """Per-epoch curves of `metrics` from `fit`'s history (one line per value of column `by`, if given)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False)
    groups = hist.groupby(by) if by else [("", hist)]
    for name, df in groups:
        for ax, m in zip(axes[0], metrics):
            ax.plot(df["epoch"], df[m], marker="o", label=str(name) or None)
            ax.set(xlabel="epoch", title=m)
    if by:
        axes[0, -1].legend(title=by, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(ev, title: str = "confusion matrix (rows: true, columns: predicted)"):
    """Confusion matrix of an `Evaluation` with counts in each cell."""
    fig, ax = plt.subplots(figsize=(1.2 * len(ev.vocab) + 2, 1.2 * len(ev.vocab) + 1.5))
    ax.imshow(ev.confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(ev.confusion):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(xticks=range(len(ev.vocab)), yticks=range(len(ev.vocab)), xticklabels=ev.vocab, yticklabels=ev.vocab,
           xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


@renamed_kwargs(size="inches")
def show_images(images, titles=None, ncols: int = 6, inches: float = 1.8, suptitle: str = ""):
    """A grid of images (arrays or PIL images) with optional titles, `inches` wide and high each."""
    images = list(images)
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(inches * ncols, inches * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(np.asarray(images[i]), cmap="gray")
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_bars(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", ylabel: str | None = None):
    """Bar chart of `y` by `x` (grouped by `hue`)."""
    table = df.pivot_table(index=x, columns=hue, values=y, aggfunc="mean") if hue else df.set_index(x)[[y]]
    ax = table.plot.bar(figsize=(max(4, 0.8 * len(table) + 2), 3), rot=0)
    ax.set(title=title, ylabel=ylabel or y)
    ax.figure.tight_layout()
    return ax.figure


def plot_heatmap(df: pd.DataFrame, index: str, columns: str, values: str, title: str = "", fmt: str = "{:.2f}"):
    """Heatmap of the mean of `values` over rows of `df` grouped by (`index`, `columns`), each cell labelled."""
    table = df.pivot_table(index=index, columns=columns, values=values, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.3 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.8))
    im = ax.imshow(table.values, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(table.values):
        ax.text(j, i, fmt.format(v), ha="center", va="center", color="white" if v < np.nanmean(table.values) else "k")
    ax.set(xticks=range(table.shape[1]), yticks=range(table.shape[0]), xlabel=columns, ylabel=index, title=title)
    ax.set_xticklabels(table.columns, rotation=30, ha="right")
    ax.set_yticklabels(table.index)
    fig.colorbar(im, ax=ax, label=values)
    fig.tight_layout()
    return fig


def plot_lines(df: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str = "", logx: bool = False,
               ax=None):
    """Mean of `y` against `x` per `hue`, with a band of +-1 std where `df` holds repeats (e.g. seeds)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.5, 3.5))
    for name, g in (df.groupby(hue) if hue else [(y, df)]):
        stats = g.groupby(x)[y].agg(["mean", "std"]).fillna(0)
        ax.plot(stats.index, stats["mean"], marker="o", label=str(name))
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15)
    ax.set(xlabel=x, ylabel=y, title=title, xscale="log" if logx else "linear")
    ax.legend(fontsize=8, title=hue)
    fig.tight_layout()
    return fig


def _scatter(ax, df: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str) -> None:
    ax.scatter(df[x], df[y], s=30)
    for r in df.itertuples():
        ax.annotate(r.arch, (getattr(r, x), getattr(r, y)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.margins(x=0.25, y=0.15)   # room for the labels
    ax.grid(True, which="both", alpha=0.3)


def plot_cost(df: pd.DataFrame):
    """Two log-log panels of a `zoo_table`: GFLOPs vs millions of params, and ms/image vs GFLOPs; returns the Figure."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    _scatter(a, df, "params_M", "gflops", "parameters (millions)", f"GFLOPs at {df['img_size'].iloc[0]} px")
    _scatter(b, df, "gflops", "ms_per_image", "GFLOPs", "latency at batch 1 (ms/image)")
    a.set_title("size vs compute")
    b.set_title("compute vs measured latency")
    fig.tight_layout()
    return fig


def plot_forest(claims: pd.DataFrame, title: str = "claims: effect and 95 % interval"):
    """Each claim's effect with its interval (rows of a `ledger` or `Results.claims()`), coloured by verdict."""
    claims = claims.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(claims) + 1.2))
    for i, c in claims.iterrows():
        colour = VERDICT_COLOURS.get(c["verdict"], "k")
        y = len(claims) - 1 - i
        ax.errorbar(c["effect"], y, xerr=[[c["effect"] - c["ci_low"]], [c["ci_high"] - c["effect"]]], fmt="o",
                    color=colour, capsize=3)
    label = lambda c: (f"{c['lesson']}: " if "lesson" in c else "") + str(c["claim"])[:60]  # noqa: E731
    ax.set_yticks(range(len(claims)), [label(c) for _, c in claims.iloc[::-1].iterrows()], fontsize=7)
    ax.axvline(0, color="k", lw=0.8, ls=":")
    for verdict, colour in VERDICT_COLOURS.items():
        ax.plot([], [], "o", color=colour, label=verdict)
    ax.legend(fontsize=7, loc="lower right")
    ax.set(xlabel="effect (each claim in its own unit)", title=title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ lesson 03: augmentation


@renamed_kwargs(size="inches")
def plot_gallery(rows: dict, inches: float = 1.3, title: str = ""):
    """One row of images per key of `rows` ({name: (n, 3, H, W) tensor or list of images}), the name on the left;
    each image `inches` wide and high."""
    rows = {k: [np.asarray(i.permute(1, 2, 0)) if hasattr(i, "permute") else np.asarray(i) for i in v]
            for k, v in rows.items()}
    ncols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(inches * ncols + 1.2, inches * len(rows) + 0.4), squeeze=False)
    for ax_row, (name, images) in zip(axes, rows.items()):
        for j, ax in enumerate(ax_row):
            ax.set(xticks=[], yticks=[])
            if j < len(images):
                ax.imshow(images[j], cmap="gray")
            else:
                ax.axis("off")
        ax_row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_intervals(df: pd.DataFrame, x: str, y: str, low: str = "low", high: str = "high", hue: str | None = None,
                   title: str = "", ref: float | None = None, ylabel: str | None = None):
    """`y` against `x` with each point's 95 % interval [`low`, `high`] as an error bar (one line per `hue`);
    a dotted line at `ref`, if given."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, g in (df.groupby(hue, sort=False) if hue else [(None, df)]):
        g = g.sort_values(x)
        ax.errorbar(g[x], g[y], yerr=[g[y] - g[low], g[high] - g[y]], marker="o", capsize=3,
                    label=None if name is None else str(name))
    if ref is not None:
        ax.axhline(ref, color="k", lw=0.8, ls=":")
    ax.set(xlabel=x, ylabel=ylabel or y, title=title)
    if hue:
        ax.legend(fontsize=8, title=hue)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ lesson 04: imbalanced data


def plot_estimates(df: pd.DataFrame, y: str, metrics, hue: str | None = None, low: str = "low", high: str = "high",
                   title: str = ""):
    """One panel per metric: each row of `y` (a category, e.g. the remedy) as a dot with its 95 % interval, one
    colour per `hue`. `df` holds columns metric, `low`, `high` per metric as `metric_with_ci` gives them, stacked
    with a `metric` column naming the metric and `value` its estimate."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    cats = list(dict.fromkeys(df[y]))
    groups = list(dict.fromkeys(df[hue])) if hue else [None]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 2, 0.38 * len(cats) * len(groups) + 1.2),
                             sharey=True, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        d = df[df["metric"] == m]
        for k, g in enumerate(groups):
            rows = d if g is None else d[d[hue] == g]
            pos = [cats.index(c) + (k - (len(groups) - 1) / 2) * 0.8 / len(groups) for c in rows[y]]
            ax.errorbar(rows["value"], pos, xerr=[rows["value"] - rows[low], rows[high] - rows["value"]], fmt="o",
                        capsize=2, ms=4, label=None if g is None else str(g))
        ax.set(yticks=range(len(cats)), yticklabels=cats, xlabel=m)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    if hue:
        axes[0][-1].legend(fontsize=7, title=hue, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_pr_curves(curves: dict, title: str = "precision-recall of the rare class"):
    """Precision against recall, one line per {name: (curve DataFrame with recall and precision, average precision)}."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (curve, ap) in curves.items():
        ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP {ap:.2f})", drawstyle="steps-post")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ lesson 07: pruning


def plot_boxes(df: pd.DataFrame, x: str, y: str, title: str = "", logy: bool = False):
    """A box plot of `y` for each value of `x` (in order of appearance): e.g. the filters' L1 norms per layer."""
    groups = list(dict.fromkeys(df[x]))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(groups) + 2), 3.5))
    ax.boxplot([df.loc[df[x] == g, y] for g in groups], showfliers=True, flierprops=dict(ms=2))
    ax.set_xticks(range(1, len(groups) + 1), [str(g) for g in groups], rotation=60, ha="right", fontsize=7)
    ax.set(xlabel=x, ylabel=y, title=title, yscale="log" if logy else "linear")
    fig.tight_layout()
    return fig

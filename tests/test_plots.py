"""Tests for convtips_lib.plots: every plot returns a Figure with the data drawn."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from convtips_lib.measure import Evaluation  # noqa: E402
from convtips_lib.plots import (plot_bars, plot_confusion, plot_heatmap, plot_history, plot_lines,  # noqa: E402
                                show_images)


def test_plot_history_one_panel_per_metric_and_line_per_group():
    hist = pd.DataFrame(dict(epoch=[1, 2, 1, 2], train_loss=[1, .5, .9, .4], valid_loss=[1, .6, .8, .7],
                             run=["a", "a", "b", "b"]))
    fig = plot_history(hist, ("train_loss", "valid_loss"), by="run")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]


def test_plot_confusion_writes_counts():
    ev = Evaluation(["a", "b"], np.array([0, 1]), np.array([0, 0]), np.zeros((2, 2)), {}, np.array([[1, 0], [1, 0]]))
    texts = sorted(t.get_text() for t in plot_confusion(ev).axes[0].texts)
    assert texts == ["0", "0", "1", "1"]


def test_show_images_grid_and_titles():
    fig = show_images([np.zeros((4, 4))] * 7, titles=list("abcdefg"), ncols=3)
    assert len(fig.axes) == 9 and sum(1 for ax in fig.axes if ax.images) == 7
    assert fig.axes[6].get_title() == "g"


def test_plot_bars_groups_by_hue():
    df = pd.DataFrame(dict(x=["p", "p", "q", "q"], y=[1, 2, 3, 4], h=["m", "n", "m", "n"]))
    ax = plot_bars(df, "x", "y", hue="h").axes[0]
    assert sorted(round(p.get_height()) for p in ax.patches) == [1, 2, 3, 4]


def test_plot_heatmap_labels_cell_means():
    df = pd.DataFrame(dict(f=[.1, .1, .1, .5], r=["a", "a", "b", "a"], acc=[.5, .7, .9, .8]))
    ax = plot_heatmap(df, "f", "r", "acc").axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0.60", "0.80", "0.90", "nan"]


def test_plot_lines_mean_and_spread_per_hue():
    df = pd.DataFrame(dict(n=[10, 10, 100, 100] * 2, acc=[.5, .7, .8, .8] * 2, hue=["x"] * 4 + ["y"] * 4))
    ax = plot_lines(df, "n", "acc", hue="hue", logx=True).axes[0]
    assert len(ax.lines) == 2 and ax.get_xscale() == "log"
    assert list(ax.lines[0].get_ydata()) == [0.6, 0.8]

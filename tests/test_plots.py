"""Tests for convtips_lib.ui.plots: every plot returns a Figure with the data drawn."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from convtips_lib.core.measure import Evaluation  # noqa: E402
from convtips_lib.ui.plots import (plot_bars, plot_confusion, plot_heatmap, plot_history, plot_lines,  # noqa: E402
                                show_images)


def test_plot_history_one_panel_per_metric_and_line_per_group():
    hist = pd.DataFrame(dict(epoch=[1, 2, 1, 2], train_loss=[1, .5, .9, .4], valid_loss=[1, .6, .8, .7],
                             run=["a", "a", "b", "b"]))
    fig = plot_history(hist, ("train_loss", "valid_loss"), by="run")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    assert [ax.get_title() for ax in fig.axes] == ["train_loss", "valid_loss"]
    assert [list(line.get_ydata()) for line in fig.axes[1].lines] == [[1, .6], [.8, .7]]   # run a, run b


def test_plot_forest_one_interval_per_claim_coloured_by_verdict():
    from matplotlib.colors import to_rgba
    from convtips_lib.ui.plots import VERDICT_COLOURS, plot_forest
    claims = pd.DataFrame(dict(lesson=["00", "01", "02"], claim=["a", "b", "c"], effect=[.1, -.2, 2.0],
                               ci_low=[.05, -.3, np.nan], ci_high=[.2, -.1, np.nan],
                               verdict=["supported", "refuted", "inconclusive"]))
    ax = plot_forest(claims).axes[0]
    points = [c for c in ax.containers]                       # one errorbar container per claim, top to bottom
    assert len(points) == 3
    assert [p.lines[0].get_xdata()[0] for p in points] == [.1, -.2, 2.0]
    assert [p.lines[0].get_ydata()[0] for p in points] == [2, 1, 0]
    assert [to_rgba(p.lines[0].get_color()) for p in points] == [to_rgba(VERDICT_COLOURS[v]) for v in claims["verdict"]]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["02: c", "01: b", "00: a"]
    bar = points[0].lines[2][0].get_segments()[0]             # the first claim's interval, drawn at its row
    assert np.allclose(bar[:, 0], [.05, .2])


def test_plot_cost_two_log_log_panels_labelled_by_arch():
    from convtips_lib.ui.plots import plot_cost
    df = pd.DataFrame(dict(arch=["s", "m"], params_M=[1.0, 10.0], gflops=[0.1, 2.0], ms_per_image=[1.0, 9.0],
                           img_size=[32, 32]))
    a, b = plot_cost(df).axes
    assert a.get_xscale() == a.get_yscale() == b.get_xscale() == b.get_yscale() == "log"
    assert np.allclose(a.collections[0].get_offsets(), [[1, 0.1], [10, 2]])
    assert np.allclose(b.collections[0].get_offsets(), [[0.1, 1], [2, 9]])
    assert [t.get_text() for t in a.texts] == ["s", "m"] and "32 px" in a.get_ylabel()


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


# ------------------------------------------------------------------ lesson 03: augmentation
def test_plot_gallery_one_row_per_transform():
    import torch
    from convtips_lib.ui.plots import plot_gallery
    fig = plot_gallery({"a": torch.rand(3, 3, 8, 8), "b": torch.rand(1, 3, 8, 8)})
    assert sum(1 for ax in fig.axes if ax.images) == 4 and len(fig.axes) == 6
    assert [ax.get_ylabel() for ax in fig.axes[::3]] == ["a", "b"]


def test_plot_intervals_error_bars():
    from convtips_lib.ui.plots import plot_intervals
    df = pd.DataFrame(dict(s=[1, 0, 2], y=[.7, .6, .5], low=[.6, .5, .4], high=[.8, .7, .6]))
    ax = plot_intervals(df, "s", "y", ref=0.6).axes[0]
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2] and list(ax.lines[0].get_ydata()) == [.6, .7, .5]


# ------------------------------------------------------------------ lesson 04: imbalanced data
def test_plot_estimates_one_panel_per_metric_one_row_per_category():
    from convtips_lib.ui.plots import plot_estimates
    df = pd.DataFrame(dict(remedy=["plain", "weights"] * 4, scenario=["a", "a", "b", "b"] * 2,
                           metric=["m1"] * 4 + ["m2"] * 4, value=np.linspace(0.5, 0.9, 8)))
    df["low"], df["high"] = df["value"] - 0.05, df["value"] + 0.05
    fig = plot_estimates(df, "remedy", ["m1", "m2"], hue="scenario")
    assert [ax.get_xlabel() for ax in fig.axes] == ["m1", "m2"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["plain", "weights"]


def test_plot_pr_curves_labels_each_curve_with_its_average_precision():
    from convtips_lib.topics.imbalance import pr_curve
    from convtips_lib.ui.plots import plot_pr_curves
    y = np.array([0, 0, 1, 1, 1, 0])
    fig = plot_pr_curves({"toy": pr_curve(y, np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2]))})
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("toy (AP ")


def test_plot_boxes_one_box_per_group_in_order():
    from convtips_lib.ui.plots import plot_boxes
    df = pd.DataFrame(dict(layer=["b"] * 3 + ["a"] * 4, l1=[1, 2, 3, 4, 5, 6, 7]))
    ax = plot_boxes(df, "layer", "l1", logy=True).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a"] and ax.get_yscale() == "log"

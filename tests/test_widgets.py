"""Tests for convtips_lib.ui.widgets: filters, the browser's callback, and that the widget builds without a front end."""
import ipywidgets as w
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from convtips_lib.core.data import elpv_frame  # noqa: E402
from convtips_lib.ui.widgets import dataset_browser, filter_cells, show_cells  # noqa: E402


@pytest.fixture(scope="module")
def df():
    return elpv_frame()


def test_filter_cells_matches_pandas(df):
    got = filter_cells(df, label="defective", module_type="poly")
    want = df[(df["label_bin"] == "defective") & (df["type"] == "poly")]
    assert got.index.equals(want.index) and len(got) > 0


def test_filter_any_keeps_everything(df):
    assert len(filter_cells(df)) == len(df)


def test_filter_unknown_value_lists_choices(df):
    with pytest.raises(ValueError, match="mono.*poly"):
        filter_cells(df, module_type="thin-film")


def test_show_cells_draws_n_images(df):
    fig = show_cells(df, prob="1", n=5, seed=1)
    assert sum(1 for ax in fig.axes if ax.images) == 5
    assert "5 of" in fig._suptitle.get_text()


def test_show_cells_is_seeded(df):
    titles = lambda f: [ax.get_title() for ax in f.axes]  # noqa: E731
    assert titles(show_cells(df, n=6, seed=3)) == titles(show_cells(df, n=6, seed=3))


def test_browser_builds_with_all_controls(df):
    box = dataset_browser(df)
    controls = [c for row in box.children[:2] for c in row.children]
    assert isinstance(box, w.VBox) and len(controls) == 5
    assert set(controls[1].options) == {"any", "mono", "poly"}
    assert list(controls[2].options) == ["any", "0", "1/3", "2/3", "1"]     # defect levels in their natural order


def test_browser_redraws_when_a_filter_changes(df):
    import matplotlib.pyplot as plt
    label, module_type, prob = dataset_browser(df).children[0].children
    plt.close("all")
    prob.value = "1"
    n = len(filter_cells(df, prob="1"))
    assert plt.get_fignums() and plt.gcf()._suptitle.get_text() == f"12 of {n} matching cells"
    module_type.value = "mono"
    n = len(filter_cells(df, module_type='mono', prob='1'))
    assert plt.gcf()._suptitle.get_text() == f"12 of {n} matching cells"
    plt.close("all")


# ------------------------------------------------------------------ lesson 03: augmentation
def test_show_augmented_draws_n_copies():
    import numpy as np
    from convtips_lib.ui.widgets import show_augmented
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    fig = show_augmented(img, "rotation", 45, n=5, seed=1, img_size=32)
    assert sum(1 for ax in fig.axes if ax.images) == 5 and "magnitude 45" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="out of range"):
        show_augmented(img, "rotation", 400, img_size=32)


def test_augment_widget_moves_the_slider_to_the_transforms_range():
    import numpy as np
    from convtips_lib.topics.augment import AUGMENTS
    from convtips_lib.ui.widgets import augment_widget
    box = augment_widget({"noise": np.zeros((20, 20), np.uint8)}, img_size=16)
    pick, name, mag = box.children[0].children
    name.value = "rotation"
    assert (mag.min, mag.max, mag.value) == (0, 180, AUGMENTS["rotation"].demo)
    name.value = "brightness"
    assert (mag.max, mag.value) == (AUGMENTS["brightness"].hi, AUGMENTS["brightness"].demo)


# ---------------------------------------------------------------- widgets of lessons 01 and 02 (moved from topics)

from convtips_lib.core.profiles import profile as _profile  # noqa: E402
from convtips_lib.topics.zoo import zoo_table  # noqa: E402
from convtips_lib.ui.widgets import photo_widget, transfer_widget, zoo_widget  # noqa: E402

CFG = _profile("smoke").with_(img_size=32)
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field")


@pytest.fixture(scope="module")
def table():
    return zoo_table(["resnet18", "tf_efficientnet_lite0"], img_size=32, reps=1, bs=2)


@pytest.fixture(scope="module")
def lite0():
    from convtips_lib.core.models import pretrained
    return pretrained("efficientnet_lite0")


def test_zoo_widget_offers_every_arch(table):
    box = zoo_widget(table)
    assert list(box.children[0].options) == list(table["arch"])


def test_zoo_widget_shows_the_chosen_archs_row(table, capsys):
    """Outside a kernel the Output widget lets display() through as text."""
    pick = zoo_widget(table).children[0]
    capsys.readouterr()
    other = table["arch"].iloc[1]
    pick.value = other
    shown = capsys.readouterr().out
    row = table.set_index("arch").loc[other]
    assert other in shown and str(row["params"]) in shown and table["arch"].iloc[0] not in shown


def test_photo_widget_builds(lite0):
    box = photo_widget(lite0)
    pick, upload = box.children[0].children
    assert tuple(pick.options) == SAMPLE_PHOTOS and upload.accept == "image/*"


def test_photo_widget_callbacks(lite0, capsys):
    """Outside a kernel the Output widget lets prints through: the callbacks' text shows in stdout."""
    import datetime
    pick, upload = photo_widget(lite0).children[0].children
    pick.value = "coffee"
    assert "espresso" in capsys.readouterr().out
    upload.value = ({"name": "bad.jpg", "type": "image/jpeg", "size": 2, "content": memoryview(b"xx"),
                     "last_modified": datetime.datetime.now()},)
    assert "cannot read image bad.jpg" in capsys.readouterr().out


def test_transfer_widget_builds_and_runs(tmp_path, capsys):
    import ipywidgets as iw
    import matplotlib.pyplot as plt
    from convtips_lib.core.models import pretrained
    model = pretrained("efficientnet_lite0", 2)
    box = transfer_widget(model, CFG, folder=tmp_path)
    frac, depth, button = box.children[0].children
    assert isinstance(box, iw.VBox) and list(frac.options) == list(CFG.transfer.fractions) and depth.max == 8
    depth.value = 7
    plt.close("all")
    button.click()                                     # runs quick_transfer once and draws its point
    assert any(p.suffix == ".pt" for p in tmp_path.iterdir())
    shown = capsys.readouterr().out                    # the table of runs so far, then the plot
    assert "balanced_accuracy" in shown and f"{CFG.transfer.fractions[0]}" in shown
    assert plt.gcf().axes[0].get_ylabel() == "balanced_accuracy" and len(plt.gcf().axes[0].lines) == 1
    plt.close("all")


# ------------------------------------------------------------------ lesson 04: imbalanced data
def _toy_feats():
    import torch
    from convtips_lib.topics.features import Features
    g = torch.Generator().manual_seed(0)
    xt = torch.cat([torch.randn(200, 8, generator=g), torch.randn(60, 8, generator=g) + 1.5])
    xv = torch.cat([torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 1.5])
    return Features(xt, torch.tensor([1] * 200 + [0] * 60), xv, torch.tensor([1] * 40 + [0] * 40),
                    ["defective", "functional"], key="toy", path=None, hit=False, seconds=0.0)


def test_imbalance_demo_trains_at_the_chosen_ratio_and_draws_the_confusion_matrix():
    from convtips_lib.ui.widgets import imbalance_demo
    row, table, fig = imbalance_demo(_toy_feats(), 1 / 20, "over-sampling", epochs=2, lr=1e-2)
    assert row["n_train"] == 210 and row["remedy"] == "over-sampling"          # 200 common + 10 rare
    assert list(table.index) == ["n_train", "accuracy", "balanced_accuracy", "f1_macro", "minority_recall", "roc_auc"]
    assert fig.axes[0].get_xlabel() == "predicted" and "1 rare per 20" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="already at most that imbalanced"):
        imbalance_demo(_toy_feats(), 0.9, "plain", epochs=1)


def test_imbalance_widget_runs_its_callback_on_click(capsys):
    from convtips_lib.ui.widgets import imbalance_widget
    box = imbalance_widget(_toy_feats(), epochs=1)
    ratio, remedy, button = box.children[0].children
    ratio.value = 0.9                  # clamped to the slider's top, 0.4: more rare items than the toy data has
    button.click()
    assert "already at most that imbalanced" in capsys.readouterr().out   # the message, not a crash
    ratio.value = 0.1
    remedy.value = "threshold moving"
    button.click()
    assert "balanced_accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------ lesson 05: optimizers
def _tiny_image_dls():
    import torch
    from convtips_lib.core.data import tensor_dls
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.randn(64, 3, 32, 32, generator=g) + y[:, None, None, None]
    return tensor_dls(x[:48], y[:48], x[48:], y[48:], ["a", "b"], bs=16)


def test_optimizer_demo_runs_with_the_chosen_momentum_and_plots_the_loss():
    from convtips_lib.ui.widgets import optimizer_demo
    run, fig = optimizer_demo(_tiny_image_dls(), "sgd", 0.05, 0.5, "constant", epochs=1)
    assert run["optimizer"] == "sgd" and run["schedule"] == "constant" and len(run["losses"]) == 3
    assert fig.axes[0].get_xlabel() == "step" and "sgd, lr 0.05, constant" in fig.axes[0].get_title()


def test_optimizer_widget_resets_the_lr_to_the_optimizers_default_and_trains(capsys):
    from convtips_lib.topics.optim import DEFAULT_LRS
    from convtips_lib.ui.widgets import optimizer_widget
    box = optimizer_widget(_tiny_image_dls(), epochs=1)
    opt, lr = box.children[0].children
    mom, sched, button = box.children[1].children
    opt.value = "adam"
    assert lr.value == pytest.approx(DEFAULT_LRS["adam"])
    sched.value = "cosine"
    button.click()   # trains without error; the figure goes to the Output widget


# ------------------------------------------------------------------ lesson 06: ensembles and multi-crop
def test_crop_demo_titles_each_crop_with_its_probability_and_averages():
    import torch
    from torch import nn
    from convtips_lib.ui.widgets import crop_demo
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    table, fig = crop_demo(model, torch.randn(3, 3, 16, 16), ["defective", "functional"], index=1, size=12)
    assert list(table.index)[-1] == "average" and len(table) == 11
    assert table.loc["average"].tolist() == pytest.approx(table.iloc[:10].mean().tolist())
    assert len([ax for ax in fig.axes if ax.get_title()]) == 10 and "P(defective)" in fig.axes[0].get_title()


def test_crop_widget_redraws_for_another_image():
    import torch
    from torch import nn
    from convtips_lib.ui.widgets import crop_widget
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    box = crop_widget(model, torch.randn(4, 3, 16, 16), ["a", "b"])
    slider = box.children[0]
    assert slider.max == 3
    slider.value = 2   # the callback runs without error


# ------------------------------------------------------------------ lesson 07: pruning
def _tiny_pruning_learner():
    import torch
    from convtips_lib.core.data import tensor_dls
    from convtips_lib.core.train import learner
    from convtips_lib.studies.lesson07 import prunable_net
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    dls = tensor_dls(x[:24], y[:24], x[24:], y[24:], ["a", "b"], bs=8)
    return learner(dls, prunable_net(2, True, widths=(8, 16), depth=1), seed=0)


def test_prune_demo_compares_the_pruned_copy_with_the_trained_network():
    from convtips_lib.core.measure import count_params
    from convtips_lib.ui.widgets import prune_demo
    learn = _tiny_pruning_learner()
    n = count_params(learn.model)
    table = prune_demo(learn, 16, 0.5, reps=2)
    assert list(table.index) == ["trained", "pruned 50%"] and table.loc["trained", "params"] == n
    assert table.loc["pruned 50%", "params"] < n / 2 and table.loc["pruned 50%", "mflops"] < table.loc["trained", "mflops"]
    assert table["balanced_accuracy"].between(0, 1).all() and count_params(learn.model) == n   # original untouched
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_demo(learn, 16, 1.0)


def test_prune_widget_reruns_for_another_ratio():
    from convtips_lib.ui.widgets import prune_widget
    box = prune_widget(_tiny_pruning_learner(), 16, reps=1)
    slider = box.children[0]
    assert slider.min == 0 and slider.max < 1
    slider.value = 0.3   # the callback runs without error


def _capstone_eval():
    import numpy as np
    from convtips_lib.core.measure import Evaluation
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8], [0.6, 0.4]])
    return Evaluation.of(["defective", "functional"], np.array([0, 0, 1, 1, 1]), probs.argmax(1), probs)


def test_threshold_demo_shows_the_papers_threshold_beside_the_chosen_one():
    from convtips_lib.ui.widgets import threshold_demo
    table = threshold_demo(_capstone_eval(), 0.3)
    assert list(table.index) == [0.5, 0.3]
    assert table.loc[0.5, "minority_recall"] == 0.5 and table.loc[0.3, "minority_recall"] == 1.0
    assert table.loc[0.3, "false_alarms"] == pytest.approx(2 / 3)
    assert list(threshold_demo(_capstone_eval(), 0.5).index) == [0.5]    # the same threshold once


def test_threshold_widget_reruns_for_another_threshold():
    from convtips_lib.ui.widgets import threshold_widget
    box = threshold_widget(_capstone_eval())
    slider = box.children[0]
    assert slider.description == "threshold" and slider.value == 0.5 and 0 < slider.min < slider.max < 1
    slider.value = 0.3   # the callback runs without error

"""Tests for convtips_lib.ui.widgets: each widget's callback (what it shows), then the widget driven through its
controls without a front end.

ipywidgets swallows what a callback raises, so every widget is built on one skeleton, `_control_panel`, whose box
keeps what the last run displayed (`box.shown`), the last exception a callback raised (`box.error`) and `box.run()`
(shows the controls' current values, raises). Outside a kernel the Output widget lets display() and print()
through to stdout and a traceback to stderr."""
import datetime
import io

import ipywidgets as w
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from convtips_lib.core.data import elpv_frame  # noqa: E402
from convtips_lib.core.profiles import profile as _profile  # noqa: E402
from convtips_lib.topics.zoo import zoo_table  # noqa: E402
from convtips_lib.ui.widgets import (  # noqa: E402
    _control_panel, augment_widget, crop_demo, crop_widget, dataset_browser, filter_cells, imbalance_demo,
    imbalance_widget, optimizer_demo, optimizer_widget, photo_widget, prune_demo, prune_widget, show_augmented,
    show_cells, threshold_demo, threshold_widget, transfer_widget, zoo_widget)


def _shown(box) -> tuple:
    """What the widget's last run displayed, after checking that none of its callbacks raised."""
    assert box.error is None, f"a widget callback raised {box.error!r}"
    return box.shown


def _printed(capsys) -> str:
    """stdout so far, without the terminal codes clear_output writes outside a kernel."""
    return capsys.readouterr().out.replace("\x1b[2K\r", "")


def _images(fig) -> int:
    return sum(1 for ax in fig.axes if ax.images)


# ------------------------------------------------------------------ the skeleton
def test_panel_shows_at_the_start_and_on_every_change(capsys):
    a = w.IntSlider(1)
    box, out, run = _control_panel(dict(a=a), lambda a: f"a is {a}")
    assert box.children == (a, out) and _shown(box) == ("a is 1",) and _printed(capsys) == "a is 1\n"
    a.value = 3
    assert _shown(box) == ("a is 3",) and _printed(capsys) == "a is 3\n"
    assert run(a=5) == ("a is 5",) and a.value == 3          # run with a value the control does not hold


def test_panel_with_a_button_shows_only_on_click():
    a, calls = w.IntSlider(1), []
    box, _, _ = _control_panel(dict(a=a, b=w.IntSlider(2)), lambda a, b: calls.append((a, b)) or f"{a}+{b}",
                               button="go", rows=[["a"], ["b"]])
    a_row, b_row, _ = box.children
    button = b_row.children[-1]
    assert a_row is a and isinstance(button, w.Button) and button.description == "go"
    a.value = 4
    assert calls == [] and box.shown == ()
    button.click()
    assert calls == [(4, 2)] and _shown(box) == ("4+2",)


def test_panel_keeps_shows_and_reraises_what_its_callback_raises(capsys):
    """The test that would not fail before: a callback that raises is seen by the test."""
    a = w.IntSlider(0)
    box, _, run = _control_panel(dict(a=a), lambda a: 1 / a)       # a = 0 at the start: the first run raises
    assert isinstance(box.error, ZeroDivisionError) and "ZeroDivisionError" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):
        run()
    with pytest.raises(AssertionError, match="callback raised ZeroDivisionError"):
        _shown(box)
    a.value = 4
    assert box.shown == (0.25,) and isinstance(box.error, ZeroDivisionError)   # the last error stays for the test


def test_panel_button_callback_that_raises_is_recorded_not_lost(capsys):
    box, _, _ = _control_panel(dict(a=w.IntSlider(0)), lambda a: [][a], button="go")
    box.children[0].children[-1].click()                           # ipywidgets would log and swallow it
    assert isinstance(box.error, IndexError) and "IndexError" in capsys.readouterr().err


def test_a_widget_built_on_a_broken_input_shows_and_records_the_error(capsys):
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    box = crop_widget(model, torch.randn(2, 3, 16, 16), ["a", "b"], minority=5)   # no class 5
    assert isinstance(box.error, IndexError) and "IndexError" in capsys.readouterr().err
    with pytest.raises(IndexError):
        box.run()
    box = imbalance_widget(None, epochs=1)
    box.children[0].children[-1].click()
    assert box.error is not None and type(box.error).__name__ in capsys.readouterr().err


# ------------------------------------------------------------------ lesson 00: the dataset browser
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


def test_show_cells_draws_n_matching_images_titled_with_level_and_type(df):
    fig = show_cells(df, prob="1", module_type="mono", n=5, seed=1)
    n = len(filter_cells(df, module_type="mono", prob="1"))
    assert _images(fig) == 5 and fig._suptitle.get_text() == f"5 of {n} matching cells"
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["1 mono"] * 5


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
    box = dataset_browser(df)
    (label, module_type, prob), (n, seed) = (row.children for row in box.children[:2])
    fig, = _shown(box)
    assert _images(fig) == 12 and fig._suptitle.get_text() == f"12 of {len(df)} matching cells"
    prob.value = "1"
    fig, = _shown(box)
    assert fig._suptitle.get_text() == f"12 of {len(filter_cells(df, prob='1'))} matching cells"
    module_type.value, n.value = "mono", 3
    fig, = _shown(box)
    assert fig._suptitle.get_text() == f"3 of {len(filter_cells(df, module_type='mono', prob='1'))} matching cells"
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["1 mono"] * 3


# ------------------------------------------------------------------ lesson 01: the zoo and the photo widget
CFG = _profile("smoke").with_(img_size=32)
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field")
CATS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


@pytest.fixture(scope="module")
def table():
    return zoo_table(["resnet18", "tf_efficientnet_lite0"], img_size=32, reps=1, bs=2)


def test_zoo_widget_shows_the_chosen_archs_row(table, capsys):
    box = zoo_widget(table)
    pick = box.children[0]
    assert list(pick.options) == list(table["arch"])
    first, other = table["arch"]
    row, = _shown(box)
    assert list(row["arch"]) == [first] and list(row.columns) == list(table.columns)
    capsys.readouterr()
    pick.value = other
    row, = _shown(box)
    want = table.set_index("arch").loc[other]
    assert list(row["arch"]) == [other] and row["params"].iloc[0] == want["params"]
    shown = capsys.readouterr().out
    assert other in shown and str(want["params"]) in shown and first not in shown


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _upload(name: str, content: bytes) -> tuple:
    return ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
             "last_modified": datetime.datetime.now()},)


def test_photo_widget_shows_a_photo_and_its_top5(lite0_imagenet):
    box = photo_widget(lite0_imagenet)
    pick, upload = box.children[0].children
    assert tuple(pick.options) == SAMPLE_PHOTOS and upload.accept == "image/*"
    fig, top5 = _shown(box)
    assert fig.axes[0].get_title() == "chelsea" and _images(fig) == 1
    assert list(top5.columns) == ["rank", "label", "prob"] and list(top5["rank"]) == [1, 2, 3, 4, 5]
    assert top5["label"][0].startswith(CATS) and top5["prob"].is_monotonic_decreasing


def test_photo_widget_follows_the_pick_and_the_upload(lite0_imagenet, capsys):
    from skimage.data import chelsea
    box = photo_widget(lite0_imagenet)
    pick, upload = box.children[0].children
    pick.value = "coffee"
    fig, top5 = _shown(box)
    assert fig.axes[0].get_title() == "coffee" and "espresso" in set(top5["label"])
    assert "espresso" in capsys.readouterr().out
    upload.value = _upload("bad.jpg", b"xx")
    message, = _shown(box)                                      # the message, not a traceback
    assert message.startswith("cannot read image bad.jpg") and "cannot read image bad.jpg" in capsys.readouterr().out
    upload.value = _upload("my_cat.png", _png_bytes(chelsea()))
    fig, top5 = _shown(box)
    assert fig.axes[0].get_title() == "my_cat.png" and top5["label"][0].startswith(CATS)
    pick.value = "astronaut"                                    # back to the samples after an upload
    fig, _ = _shown(box)
    assert fig.axes[0].get_title() == "astronaut"


# ------------------------------------------------------------------ lesson 02: quick transfer
@pytest.mark.slow
def test_transfer_widget_adds_a_run_per_click(lite0_pretrained_2class, tmp_path, capsys):
    box = transfer_widget(lite0_pretrained_2class, CFG, folder=tmp_path)
    frac, depth, button = box.children[0].children
    assert list(frac.options) == list(CFG.transfer.fractions) and (depth.min, depth.max) == (5, 8) and box.shown == ()
    depth.value = 7
    button.click()                                     # runs quick_transfer once and draws its point
    runs, fig = _shown(box)
    assert len(runs) == 1 and runs.loc[0, ["frac", "depth", "trainable_groups"]].tolist() == [CFG.transfer.fractions[0], 7, 1]
    assert 0 <= runs.loc[0, "balanced_accuracy"] <= 1 and any(p.suffix == ".pt" for p in tmp_path.iterdir())
    ax = fig.axes[0]
    assert ax.get_ylabel() == "balanced_accuracy" and len(ax.lines) == 1
    assert ax.lines[0].get_xdata().tolist() == [1]                                  # one trainable group
    assert ax.lines[0].get_ydata()[0] == pytest.approx(runs.loc[0, "balanced_accuracy"], abs=5e-4)   # table: 3 d.p.
    assert "balanced_accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------ lesson 03: augmentation
def test_show_augmented_draws_n_copies():
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    fig = show_augmented(img, "rotation", 45, n=5, seed=1, img_size=32)
    assert _images(fig) == 5 and fig._suptitle.get_text() == "rotation, magnitude 45 (max degrees); seed 1"
    with pytest.raises(ValueError, match="out of range"):
        show_augmented(img, "rotation", 400, img_size=32)


def test_augment_widget_moves_the_slider_to_the_transforms_range_and_redraws():
    from convtips_lib.topics.augment import AUGMENTS
    box = augment_widget({"noise": np.zeros((20, 20), np.uint8)}, img_size=16)
    (pick, name, mag), (n, seed) = (row.children for row in box.children[:2])
    first, a = next(iter(AUGMENTS.items()))
    fig, = _shown(box)
    assert _images(fig) == 8 and fig._suptitle.get_text().startswith(f"{first}, magnitude {a.demo:g}")
    name.value = "rotation"
    assert (mag.min, mag.max, mag.value) == (0, 180, AUGMENTS["rotation"].demo)
    fig, = _shown(box)
    assert fig._suptitle.get_text() == f"rotation, magnitude {AUGMENTS['rotation'].demo:g} (max degrees); seed 0"
    name.value = "brightness"
    assert (mag.max, mag.value) == (AUGMENTS["brightness"].hi, AUGMENTS["brightness"].demo)
    n.value, seed.value = 3, 5
    fig, = _shown(box)
    assert _images(fig) == 3 and fig._suptitle.get_text().startswith("brightness,")
    assert fig._suptitle.get_text().endswith("seed 5")


# ------------------------------------------------------------------ lesson 04: imbalanced data
def _toy_feats():
    from convtips_lib.topics.features import Features
    g = torch.Generator().manual_seed(0)
    xt = torch.cat([torch.randn(200, 8, generator=g), torch.randn(60, 8, generator=g) + 1.5])
    xv = torch.cat([torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 1.5])
    return Features(xt, torch.tensor([1] * 200 + [0] * 60), xv, torch.tensor([1] * 40 + [0] * 40),
                    ["defective", "functional"], key="toy", path=None, hit=False, seconds=0.0)


def test_imbalance_demo_trains_at_the_chosen_ratio_and_draws_the_confusion_matrix():
    row, table, fig = imbalance_demo(_toy_feats(), 1 / 20, "over-sampling", epochs=2, lr=1e-2)
    assert row["n_train"] == 210 and row["remedy"] == "over-sampling"          # 200 common + 10 rare
    assert list(table.index) == ["n_train", "accuracy", "balanced_accuracy", "f1_macro", "minority_recall", "roc_auc"]
    assert list(table.columns) == ["over-sampling"] and table.loc["n_train", "over-sampling"] == 210
    assert fig.axes[0].get_xlabel() == "predicted" and "1 rare per 20" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="already at most that imbalanced"):
        imbalance_demo(_toy_feats(), 0.9, "plain", epochs=1)


def test_imbalance_widget_trains_on_click_and_shows_a_ratio_too_high_as_a_message(capsys):
    box = imbalance_widget(_toy_feats(), epochs=1)
    ratio, remedy, button = box.children[0].children
    ratio.value = 0.9                  # clamped to the slider's top, 0.4: more rare items than the toy data has
    assert box.shown == ()             # nothing runs before a click
    button.click()
    message, = _shown(box)             # the message, not a crash
    assert "already at most that imbalanced" in message and "already at most that imbalanced" in capsys.readouterr().out
    ratio.value = 0.1
    remedy.value = "threshold moving"
    button.click()
    table, fig = _shown(box)
    assert list(table.columns) == ["threshold moving"] and table.loc["n_train", "threshold moving"] == 220
    assert table.loc["balanced_accuracy", "threshold moving"] == pytest.approx(table.loc["balanced_accuracy"].iloc[0])
    assert "1 rare per 10" in fig.axes[0].get_title() and "balanced_accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------ lesson 05: optimizers
def _tiny_image_dls():
    from convtips_lib.core.data import tensor_dls
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.randn(64, 3, 32, 32, generator=g) + y[:, None, None, None]
    return tensor_dls(x[:48], y[:48], x[48:], y[48:], ["a", "b"], bs=16)


def test_optimizer_demo_runs_with_the_chosen_momentum_and_plots_the_loss():
    run, fig = optimizer_demo(_tiny_image_dls(), "sgd", 0.05, 0.5, "constant", epochs=1)
    assert run["optimizer"] == "sgd" and run["schedule"] == "constant" and len(run["losses"]) == 3
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step" and ax.get_title().startswith("sgd, lr 0.05, constant: balanced accuracy")
    losses = np.asarray(run["losses"], float)
    assert ax.lines[0].get_ydata().tolist() == pytest.approx(np.cumsum(losses) / [1, 2, 3])   # a running mean


def test_optimizer_widget_resets_the_lr_to_the_optimizers_default_and_trains_on_click():
    from convtips_lib.topics.optim import DEFAULT_LRS
    box = optimizer_widget(_tiny_image_dls(), epochs=1)
    opt, lr = box.children[0].children
    mom, sched, button = box.children[1].children
    opt.value = "adam"
    assert lr.value == pytest.approx(DEFAULT_LRS["adam"])
    sched.value = "cosine"
    assert box.shown == ()
    button.click()
    fig, = _shown(box)
    assert isinstance(fig, Figure) and fig.axes[0].get_title().startswith(f"adam, lr {lr.value:g}, cosine")
    assert len(fig.axes[0].lines[0].get_ydata()) == 3                        # 48 images / 16: three steps


# ------------------------------------------------------------------ lesson 06: ensembles and multi-crop
def _pool_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def test_crop_demo_titles_each_crop_with_its_probability_and_averages():
    table, fig = crop_demo(_pool_model(), torch.randn(3, 3, 16, 16), ["defective", "functional"], index=1, img_size=12)
    assert list(table.index)[-1] == "average" and len(table) == 11
    assert list(table.columns) == ["defective", "functional"]
    assert table.loc["average"].tolist() == pytest.approx(table.iloc[:10].mean().tolist())
    assert np.allclose(table.sum(1), 1)                                       # probabilities
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"{name}\nP(defective) {p:.2f}" for name, p in zip(table.index[:10], table["defective"][:10])]
    assert fig._suptitle.get_text() == f"image 1: average P(defective) {table.loc['average', 'defective']:.2f}"


def test_crop_widget_redraws_for_another_image():
    model, x, vocab = _pool_model(), torch.randn(4, 3, 16, 16), ["a", "b"]
    box = crop_widget(model, x, vocab)
    slider = box.children[0]
    assert (slider.min, slider.max) == (0, len(x) - 1)
    fig, table = _shown(box)
    assert table.equals(crop_demo(model, x, vocab, 0)[0].round(3)) and fig._suptitle.get_text().startswith("image 0")
    slider.value = 2
    fig, table = _shown(box)
    assert table.equals(crop_demo(model, x, vocab, 2)[0].round(3)) and fig._suptitle.get_text().startswith("image 2")


# ------------------------------------------------------------------ lesson 07: pruning
def _tiny_pruning_learner():
    from convtips_lib.core.data import tensor_dls
    from convtips_lib.core.train import learner
    from convtips_lib.studies.lesson07 import prunable_net
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    dls = tensor_dls(x[:24], y[:24], x[24:], y[24:], ["a", "b"], bs=8)
    return learner(dls, prunable_net(2, True, widths=(8, 16), blocks=1), seed=0)


def test_prune_demo_compares_the_pruned_copy_with_the_trained_network():
    from convtips_lib.core.measure import count_params
    learn = _tiny_pruning_learner()
    n = count_params(learn.model)
    table = prune_demo(learn, 16, 0.5, reps=2)
    assert list(table.index) == ["trained", "pruned 50%"] and table.loc["trained", "params"] == n
    assert table.loc["pruned 50%", "params"] < n / 2 and table.loc["pruned 50%", "mflops"] < table.loc["trained", "mflops"]
    assert table["balanced_accuracy"].between(0, 1).all() and count_params(learn.model) == n   # original untouched
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_demo(learn, 16, 1.0)


def test_prune_widget_reruns_for_another_ratio(capsys):
    box = prune_widget(_tiny_pruning_learner(), 16, reps=1)
    slider = box.children[0]
    assert slider.min == 0 and slider.max < 1
    half, = _shown(box)
    assert list(half.index) == ["trained", "pruned 50%"]
    slider.value = 0.3
    less, = _shown(box)
    assert list(less.index) == ["trained", "pruned 30%"] and "pruned 30%" in capsys.readouterr().out
    assert less.loc["trained", "params"] == half.loc["trained", "params"]
    assert half.loc["pruned 50%", "params"] < less.loc["pruned 30%", "params"] < less.loc["trained", "params"]


# ------------------------------------------------------------------ lesson 08: the capstone
def _capstone_eval():
    from convtips_lib.core.measure import Evaluation
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8], [0.6, 0.4]])
    return Evaluation.of(["defective", "functional"], np.array([0, 0, 1, 1, 1]), probs.argmax(1), probs)


def test_threshold_demo_shows_the_papers_threshold_beside_the_chosen_one():
    table = threshold_demo(_capstone_eval(), 0.3)
    assert list(table.index) == [0.5, 0.3]
    assert table.loc[0.5, "minority_recall"] == 0.5 and table.loc[0.3, "minority_recall"] == 1.0
    assert table.loc[0.3, "false_alarms"] == pytest.approx(2 / 3)
    assert list(threshold_demo(_capstone_eval(), 0.5).index) == [0.5]    # the same threshold once


def test_threshold_widget_starts_at_the_papers_threshold_and_reruns_for_another(capsys):
    box = threshold_widget(_capstone_eval())
    slider = box.children[0]
    assert slider.description == "threshold" and 0 < slider.min < slider.max < 1
    start, = _shown(box)
    assert list(start.index) == [0.5] and start.loc[0.5, "minority_recall"] == 0.5
    capsys.readouterr()
    slider.value = 0.3
    table, = _shown(box)
    assert isinstance(table, pd.DataFrame) and list(table.index) == [0.5, 0.3]
    assert table.loc[0.3, "minority_recall"] == 1.0 and table.loc[0.3, "false_alarms"] == pytest.approx(0.667)
    assert "minority_recall" in capsys.readouterr().out

"""Tests for convtips_lib.course.exercises: right answers pass, wrong and missing ones get a hint."""
import numpy as np
import pytest

from convtips_lib.core.data import elpv_frame
from convtips_lib.course.exercises import (check_best_small_data_regime, check_cat_preprocessing, check_head_only_params,
                                    check_param_count, check_poly_defect_rate, check_valid_defectives)


@pytest.fixture(scope="module")
def df():
    return elpv_frame()


def test_valid_defectives(df, capsys):
    truth = int((df["is_valid"] & df["defective"]).sum())
    assert check_valid_defectives(truth) is True
    assert "Correct" in capsys.readouterr().out
    assert check_valid_defectives(truth + 1) is False
    assert "Hint" in capsys.readouterr().out


def test_unanswered_gets_a_hint(capsys):
    assert check_valid_defectives(None) is False
    assert "Not answered yet" in capsys.readouterr().out


def test_poly_rate_tolerance_and_percent_hint(df, capsys):
    truth = float(df.loc[df["type"] == "poly", "defective"].mean())
    assert check_poly_defect_rate(truth + 0.001) is True
    assert check_poly_defect_rate(100 * truth) is False     # a percentage, not a fraction
    assert "fraction between 0 and 1" in capsys.readouterr().out


def test_param_count(capsys):
    import torchvision
    imagenet = sum(p.numel() for p in torchvision.models.resnet18().parameters())   # 11,689,512
    assert check_param_count(imagenet - (512 * 1000 + 1000) + (512 * 2 + 2)) is True   # a 2-class head instead
    assert check_param_count(imagenet) is False      # the ImageNet head's count
    assert "512 * 2" in capsys.readouterr().out


@pytest.fixture(scope="module")
def lite0_and_cat(lite0_imagenet):
    from skimage.data import chelsea
    return lite0_imagenet, chelsea()


@pytest.mark.parametrize("kw, hint", [(dict(bgr=True), "BGR"), (dict(size=64), "shape"),
                                      (dict(stats=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))), "normalisation"),
                                      (dict(stats=((0, 0, 0), (1 / 255,) * 3)), "too large")])
def test_cat_preprocessing_names_the_mistake(lite0_and_cat, capsys, kw, hint):
    from convtips_lib.topics.imagenet import preprocess
    model, img = lite0_and_cat
    args = {**dict(size=model.meta["input_size"], stats=model.meta["stats"]), **kw}
    assert check_cat_preprocessing(preprocess(img, args.pop("size"), args.pop("stats"), **args), model, img) is False
    assert hint in capsys.readouterr().out


def test_cat_preprocessing_right(lite0_and_cat, capsys):
    from convtips_lib.topics.imagenet import preprocess
    model, img = lite0_and_cat
    assert check_cat_preprocessing(preprocess(img, model.meta["input_size"], model.meta["stats"]), model, img)
    assert "cat" in capsys.readouterr().out


def test_best_small_data_regime(capsys):
    import pandas as pd
    grid = pd.DataFrame(dict(frac=[.1, .1, .5, .5], regime=["head only", "whole network"] * 2,
                             balanced_accuracy=[.7, .6, .7, .9]))
    assert check_best_small_data_regime("head only", grid) is True
    assert check_best_small_data_regime("whole network", grid) is False


def test_head_only_params():
    assert check_head_only_params(1280 * 2 + 2) is True
    assert check_head_only_params(1280 * 2) is False


# ------------------------------------------------------------------ lesson 03: augmentation
def test_label_keeping(capsys):
    from convtips_lib.course.exercises import check_label_keeping
    keeps = ["flip horizontal", "flip vertical", "rotation", "shear", "elastic warp", "brightness", "contrast"]
    assert check_label_keeping(None) is False and "Hint" in capsys.readouterr().out
    assert check_label_keeping(keeps) is True and "Correct" in capsys.readouterr().out
    assert check_label_keeping(keeps + ["random resized crop"]) is False
    assert "cut the crack away" in capsys.readouterr().out
    assert check_label_keeping(keeps[:-1]) is False and "left out" in capsys.readouterr().out
    assert check_label_keeping(["mirror"]) is False and "not transform names" in capsys.readouterr().out


def test_best_strength(capsys):
    import pandas as pd
    from convtips_lib.course.exercises import check_best_strength
    sweep = pd.DataFrame(dict(strength=[0, 0.5, 1, 2], balanced_accuracy=[.6, .7, .68, .5]))
    assert check_best_strength(0.5, sweep) is True and "0.700" in capsys.readouterr().out
    assert check_best_strength(1, sweep) is False


# ------------------------------------------------------------------ lesson 04: imbalanced data
def test_class_weights_check(capsys):
    from convtips_lib.course.exercises import check_class_weights
    labels = ["a"] * 30 + ["b"] * 10
    assert check_class_weights(None, labels) is False and "n / (k * n_c)" in capsys.readouterr().out
    assert check_class_weights({"a": 40 / 60, "b": 40 / 20}, labels) is True
    assert check_class_weights({"a": 1 / 30, "b": 1 / 10}, labels) is False
    assert "scale" in capsys.readouterr().out     # right ratios, wrong scale: the hint says so


def test_minority_recall_check_tells_recall_from_precision(capsys):
    from convtips_lib.course.exercises import check_minority_recall
    cm = np.array([[50, 5], [15, 30]])            # class 1: 30 of 45 found; precision 30 / 35
    assert check_minority_recall(30 / 45, cm, 1) is True
    assert check_minority_recall(30 / 35, cm, 1) is False
    assert "precision" in capsys.readouterr().out


# ------------------------------------------------------------------ lesson 05: optimizers
def test_momentum_factor_check(capsys):
    from convtips_lib.course.exercises import check_momentum_factor
    assert check_momentum_factor(None) is False and "1 - momentum" in capsys.readouterr().out
    assert check_momentum_factor(10) is True and check_momentum_factor(0.9) is False
    assert check_momentum_factor(2, momentum=0.5) is True


def test_most_robust_check_accepts_any_tied_winner(capsys):
    import pandas as pd
    from convtips_lib.course.exercises import check_most_robust
    sens = pd.DataFrame(dict(optimizer=["sgd", "adam", "rmsprop"], decades=[0.75, 1.5, 1.5]))
    assert check_most_robust("adam", sens) is True and check_most_robust("rmsprop", sens) is True
    assert check_most_robust("sgd", sens) is False and "decades column" in capsys.readouterr().out


# ------------------------------------------------------------------ lesson 06: ensembles and multi-crop
def test_forward_passes_check(capsys):
    from convtips_lib.course.exercises import check_forward_passes
    assert check_forward_passes(50) is True and check_forward_passes(15) is False
    assert "multiply" in capsys.readouterr().out


def test_worst_crop_check(capsys):
    import pandas as pd
    from convtips_lib.course.exercises import check_worst_crop
    per_crop = pd.DataFrame(dict(balanced_accuracy=[0.8, 0.6, 0.7]), index=["centre", "top left", "top right"])
    assert check_worst_crop("top left", per_crop) is True and check_worst_crop("centre", per_crop) is False


def test_flops_saving_check(capsys):
    from convtips_lib.course.exercises import check_flops_saving
    assert check_flops_saving(4) is True and check_flops_saving("4.0") is True
    assert check_flops_saving(2) is False and check_flops_saving("half") is False
    assert "C_in x C_out" in capsys.readouterr().out
    assert check_flops_saving(16, keep=0.25) is True


def test_first_pruned_check(capsys):
    import torch
    from torch import nn
    from convtips_lib.course.exercises import check_first_pruned
    conv = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -0.5, 1.0]).view(3, 1, 1, 1))
    assert check_first_pruned(1, conv) is True and check_first_pruned(0, conv) is False
    assert check_first_pruned("one", conv) is False and "argmin" in capsys.readouterr().out


def test_most_valuable_tip_check(capsys):
    import pandas as pd
    from convtips_lib.course.exercises import check_most_valuable_tip
    tips = ["augmentation", "pretrained weights", "balanced sampling"]
    table = pd.DataFrame(dict(tip=tips * 2, direction=["in the full recipe"] * 3 + ["added to plain"] * 3,
                              in_recipe=[True, True, False] * 2, metric=["balanced_accuracy"] * 6,
                              value=[0.01, 0.12, 0.3, 0.2, 0.05, 0.0]))
    assert check_most_valuable_tip("pretrained weights", table) is True
    assert check_most_valuable_tip("Pretrained Weights ", table) is True
    assert check_most_valuable_tip("augmentation", table) is False          # the largest 'added', not 'in the full'
    assert check_most_valuable_tip("balanced sampling", table) is False     # not in the recipe: nothing to remove
    assert "in the full recipe" in capsys.readouterr().out
    assert check_most_valuable_tip(None, table) is False


def test_paper_gap_check(capsys):
    from convtips_lib.course.exercises import check_paper_gap
    assert check_paper_gap(0.88, 0.893) is True and check_paper_gap("+0.88", 0.893) is True
    assert check_paper_gap(88.0, 0.893) is False and check_paper_gap("lots", 0.893) is False
    assert "percentage points" in capsys.readouterr().out
    assert check_paper_gap(-3.42, 0.85) is True

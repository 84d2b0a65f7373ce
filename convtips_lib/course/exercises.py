"""Exercise checks: each returns True/False and prints a helpful message; `None` means not answered yet."""
from __future__ import annotations

import torch

from ..core.data import elpv_frame

__all__ = ["check_valid_defectives", "check_poly_defect_rate", "check_param_count", "check_cat_preprocessing",
           "check_best_small_data_regime", "check_head_only_params"]


def _verdict(answer, correct: bool, hint: str, praise: str) -> bool:
    if answer is None:
        print(f"Not answered yet. Hint: {hint}")
        return False
    print(f"Correct! {praise}" if correct else f"Not quite ({answer!r}). Hint: {hint}")
    return correct


def check_valid_defectives(answer) -> bool:
    """Lesson 00: the number of defective cells (prob >= 0.5) in the validation split."""
    df = elpv_frame()
    truth = int((df["is_valid"] & df["defective"]).sum())
    return _verdict(answer, answer is not None and int(answer) == truth,
                    "filter elpv_frame() on both 'is_valid' and 'defective', then count rows (len or .sum()).",
                    f"{truth} of {int(df['is_valid'].sum())} validation cells are defective.")


def check_poly_defect_rate(answer) -> bool:
    """Lesson 00: the fraction (0..1) of polycrystalline cells that are defective, within 0.005."""
    df = elpv_frame()
    truth = float(df.loc[df["type"] == "poly", "defective"].mean())
    ok = answer is not None and abs(float(answer) - truth) < 0.005
    return _verdict(answer, ok, "select rows with type == 'poly' and take the mean of the boolean 'defective' column "
                    "(a fraction between 0 and 1, not a percentage).", f"{truth:.1%} of poly cells are defective.")


def check_param_count(answer) -> bool:
    """Lesson 01: the number of parameters of resnet18 with a 2-class head (random init, no download)."""
    from ..core.measure import count_params
    from ..core.models import pretrained
    truth = count_params(pretrained("resnet18", 2, weights=None))
    return _verdict(answer, answer is not None and int(answer) == truth,
                    "sum p.numel() over model.parameters() (or use ctl.count_params); the 2-class head has "
                    "512 * 2 weights + 2 biases.", f"resnet18 with a 2-class head has {truth:,} parameters.")


def _preprocessing_mistake(x, model, img) -> str | None:
    """Which detail of `x` differs from the right preprocessing of `img` for `model`; None when it matches."""
    from ..topics.imagenet import preprocess
    meta = model.meta
    size, stats = meta["input_size"], meta["stats"]
    if tuple(x.shape) != (1, 3, size, size):
        return f"the shape is {tuple(x.shape)}, the model expects (1, 3, {size}, {size}): check size="
    right = preprocess(img, size, stats)
    if torch.allclose(x, right, atol=1e-4):
        return None
    if torch.allclose(x, right.flip(1), atol=1e-4):
        return "the channels are in BGR order: use bgr=False"
    if x.abs().max() > 20:
        return "the values are far too large: pixels must be scaled to [0, 1] before normalising"
    return f"the normalisation differs: this model expects mean {stats[0]} and std {stats[1]} (model.meta['stats'])"


def check_cat_preprocessing(x, model, img) -> bool:
    """Lesson 01: `x` must be `img` preprocessed as `model` expects, so that its top-1 is a cat class."""
    if x is None:
        return _verdict(None, False, "call ctl.preprocess(img, size, stats) with the values in model.meta.", "")
    from ..topics.imagenet import imagenet_labels
    mistake = _preprocessing_mistake(x, model, img)
    model.eval()
    with torch.no_grad():
        label = imagenet_labels()[int(model(x).argmax())]
    if mistake is None:
        print(f"Correct! The model sees a {label!r}: size, channel order and normalisation all match model.meta.")
    else:
        print(f"Not quite: {mistake} (the model now says {label!r}).")
    return mistake is None


def check_best_small_data_regime(answer, grid) -> bool:
    """Lesson 02: the regime with the best mean balanced accuracy at the smallest data fraction of `grid`."""
    small = grid[grid["frac"] == grid["frac"].min()]
    truth = small.groupby("regime")["balanced_accuracy"].mean().idxmax()
    return _verdict(answer, answer == truth, "filter the grid on the smallest 'frac', group by 'regime' and take "
                    "the idxmax of the mean 'balanced_accuracy' (a regime name, e.g. 'head only').",
                    f"in this run {truth!r} was best with the least data.")


def check_head_only_params(answer) -> bool:
    """Lesson 02: how many weights (ndim > 1) and biases of the Linear head a 'head only' lite0 2-class model trains."""
    from ..core.models import pretrained
    from ..core.measure import count_params
    model = pretrained("efficientnet_lite0", 2, weights=None)
    truth, body = count_params(model.head), count_params(model.body)
    return _verdict(answer, answer is not None and int(answer) == truth,
                    "the head is Dropout + Linear(1280, 2): count its weight matrix and its bias.",
                    f"{truth:,} parameters, against {body:,} in the body: that is why head-only training "
                    "needs so little data.")


# ------------------------------------------------------------------ lesson 03: augmentation
__all__ += ["check_label_keeping", "check_best_strength"]


def check_label_keeping(answer) -> bool:
    """Lesson 03: the transforms of `AUGMENTS` that apply to a one-channel EL cell and always keep its defect label."""
    from ..topics.augment import AUGMENTS
    truth = {n for n, a in AUGMENTS.items() if a.el_label == "keeps"}
    if answer is None:
        return _verdict(None, False, "look at the el_label column of ctl.augment_table(): a crack must survive the "
                        "transform, and the transform must make sense on a gray image.", "")
    answer = {answer} if isinstance(answer, str) else set(answer)
    unknown = answer - set(AUGMENTS)
    wrong = sorted(answer & set(AUGMENTS) - truth)
    missing = sorted(truth - answer)
    if unknown:
        hint = f"{sorted(unknown)} are not transform names: choose from {list(AUGMENTS)}."
    elif wrong:
        hint = f"{wrong[0]!r} does not always keep it: {AUGMENTS[wrong[0]].why}."
    else:
        hint = f"you left out {len(missing)}, e.g. {missing[0]!r}: {AUGMENTS[missing[0]].why}." if missing else ""
    return _verdict(sorted(answer), not (unknown or wrong or missing), hint,
                    f"{len(truth)} of {len(AUGMENTS)} transforms keep an EL cell's label; a random crop can cut "
                    "the defect away and strong blur can erase a thin crack.")


def check_best_strength(answer, sweep) -> bool:
    """Lesson 03: the augmentation strength with the best validation balanced accuracy in the sweep `sweep`."""
    best = sweep.loc[sweep["balanced_accuracy"].idxmax()]
    ok = answer is not None and abs(float(answer) - float(best["strength"])) < 1e-9
    return _verdict(answer, ok, "take the 'strength' of the row with the largest 'balanced_accuracy' "
                    "(sweep.loc[sweep.balanced_accuracy.idxmax(), 'strength']).",
                    f"strength {best['strength']:g} reached {best['balanced_accuracy']:.3f}; weaker settings "
                    "under-use the data, stronger ones distort it.")


# ------------------------------------------------------------------ lesson 04: imbalanced data
__all__ += ["check_class_weights", "check_minority_recall"]


def check_class_weights(answer, labels) -> bool:
    """Lesson 04: inverse-frequency class weights {class: n / (k * n_c)} of the training labels `labels`, within 1 %."""
    from ..topics.imbalance import class_counts, class_weights
    truth, counts = class_weights(labels), class_counts(labels)
    hint = (f"count each class (n_c), the items (n = {int(counts.sum())}) and the classes (k = {len(counts)}); the "
            "weight of class c is n / (k * n_c), so a rare class weighs more; answer a dict {class: weight}.")
    if answer is None or not isinstance(answer, dict):
        return _verdict(answer, False, hint, "")
    got = {str(k): float(v) for k, v in answer.items()}
    wrong = [c for c in truth if c not in got or abs(got[c] - truth[c]) > 0.01 * truth[c]]
    if wrong and all(c in got for c in truth) and all(abs(got[c] * counts[c] - got[wrong[0]] * counts[wrong[0]])
                                                      < 1e-6 * got[c] * counts[c] for c in truth):
        hint = "the ratios are right but not the scale: multiply by n / (k * (weight x count))."
    return _verdict(answer, not wrong, hint, "weight x count is the same for every class: "
                    + ", ".join(f"{c}: {w:.3f}" for c, w in truth.items()) + ".")


def check_minority_recall(answer, confusion, minority: int) -> bool:
    """Lesson 04: the recall of class `minority` read off a confusion matrix (rows true, columns predicted)."""
    import numpy as np
    cm = np.asarray(confusion)
    truth = float(cm[minority, minority] / cm[minority].sum())
    precision = float(cm[minority, minority] / max(1, cm[:, minority].sum()))
    ok = answer is not None and abs(float(answer) - truth) < 0.005
    hint = ("recall = the rare class's correct predictions / all its true items: the diagonal cell over its ROW sum "
            "(rows are the true class).")
    if answer is not None and abs(float(answer) - precision) < 0.005 and not ok:
        hint = "that is the precision (the column sum): recall divides by the row sum, the items truly of the class."
    return _verdict(answer, ok, hint, f"{truth:.3f}: of {int(cm[minority].sum())} rare items the model found "
                    f"{int(cm[minority, minority])}.")


# ------------------------------------------------------------------ lesson 05: optimizers
__all__ += ["check_momentum_factor", "check_most_robust"]


def check_momentum_factor(answer, momentum: float = 0.9) -> bool:
    """Lesson 05: how many times larger SGD's steady step is with `momentum` than without (1 / (1 - momentum))."""
    truth = 1 / (1 - momentum)
    ok = answer is not None and abs(float(answer) - truth) < 0.01 * truth
    return _verdict(answer, ok, "with a constant gradient g the velocity v = momentum * v + g settles where "
                    "v = momentum * v + g, i.e. v = g / (1 - momentum).",
                    f"{truth:g}x: momentum {momentum} lets steps grow to {truth:g} times the plain gradient step, "
                    "one reason SGD's learning rate and momentum must be chosen together.")


def check_most_robust(answer, sensitivity) -> bool:
    """Lesson 05: the optimizer whose good learning rates (within two points of its best) span the most decades."""
    table = sensitivity.set_index("optimizer")
    best = table["decades"].max()
    winners = sorted(table.index[table["decades"] == best])
    ok = answer is not None and str(answer) in winners
    return _verdict(answer, ok, "look at the decades column of the sensitivity table: how many decades of "
                    "learning rate lie between the smallest and the largest rate within two points of that "
                    "optimizer's best.",
                    f"{', '.join(winners)}: its good rates spanned {best:.2f} decades, the widest band of this run.")


# ------------------------------------------------------------------ lesson 06: ensembles and multi-crop
__all__ += ["check_forward_passes", "check_worst_crop"]


def check_forward_passes(answer, members: int = 5, crops: int = 10) -> bool:
    """Lesson 06: forward passes per image for an ensemble of `members` networks, each on a `crops`-crop."""
    truth = members * crops
    ok = answer is not None and int(answer) == truth
    return _verdict(answer, ok, "every member sees every crop: multiply, do not add.",
                    f"{truth} passes per image instead of 1: why these tricks win competitions and rarely ship.")


def check_worst_crop(answer, per_crop) -> bool:
    """Lesson 06: the crop position with the lowest balanced accuracy in the per-crop table (index: crop name)."""
    worst = str(per_crop["balanced_accuracy"].idxmin())
    ok = answer is not None and str(answer) == worst
    return _verdict(answer, ok, "sort the per-crop table by balanced_accuracy and take the first row's name.",
                    f"{worst!r}: {per_crop['balanced_accuracy'].min():.3f}; a crop that leaves out part of the cell "
                    "can leave out its defect.")


# ------------------------------------------------------------------ lesson 07: pruning
__all__ += ["check_flops_saving", "check_first_pruned"]


def check_flops_saving(answer, keep: float = 0.5) -> bool:
    """Lesson 07: how many times fewer FLOPs a conv layer needs when its input and output channels both keep the
    share `keep` (the FLOPs scale with in x out channels)."""
    truth = 1 / keep ** 2
    try:
        ok = answer is not None and abs(float(answer) - truth) < 0.05 * truth
    except (TypeError, ValueError):   # not a number: say so through the hint
        ok = False
    return _verdict(answer, ok, "a conv's multiply-adds are H x W x k x k x C_in x C_out: both channel counts shrink.",
                    f"{truth:g}x fewer: removing a layer's filters also removes the next layer's inputs, which is why "
                    "FLOPs fall faster than the share of filters removed.")


def check_first_pruned(answer, conv) -> bool:
    """Lesson 07: the index of the filter of `conv` that L1 pruning removes first."""
    from ..topics.prune import l1_order
    first = int(l1_order(conv)[0])
    ok = answer is not None and str(answer).strip().lstrip("-").isdigit() and int(answer) == first
    return _verdict(answer, ok, "sum the absolute weights of each filter (conv.weight.abs().sum((1, 2, 3))) and take "
                    "the index of the smallest (argmin).",
                    f"filter {first}: the smallest L1 norm, the least (by this measure) that the layer's output needs.")


# ------------------------------------------------------------------ lesson 08: the capstone
__all__ += ["check_most_valuable_tip", "check_paper_gap"]


def check_most_valuable_tip(answer, table, metric: str = "balanced_accuracy") -> bool:
    """Lesson 08: of the tips in the full recipe, the one whose removal cost the most `metric` (rows of
    `ablation_table`)."""
    rows = table[(table["direction"] == "in the full recipe") & table["in_recipe"] &
                 (table["metric"] == metric)].set_index("tip")["value"]
    best = str(rows.idxmax())
    ok = answer is not None and str(answer).strip().lower() == best.lower()
    return _verdict(answer, ok, "filter the ablation table to direction 'in the full recipe', in_recipe True and "
                    f"metric {metric!r}, then take the tip with the largest value (idxmax); the names are the "
                    "table's tip column.",
                    f"{best!r}: removing it cost {rows.max():+.3f}. Compare its row 'added to plain': a tip's worth "
                    "depends on what else is in the recipe.")


def check_paper_gap(answer, accuracy: float, paper: float = 0.8842) -> bool:
    """Lesson 08: this run's accuracy minus the paper's CNN (88.42 %), in percentage points."""
    truth = 100 * (accuracy - paper)
    try:
        ok = answer is not None and abs(float(answer) - truth) < 0.1
    except (TypeError, ValueError):
        ok = False
    return _verdict(answer, ok, "percentage points: 100 x (this run's accuracy - 0.8842), e.g. 0.893 -> +0.88.",
                    f"{truth:+.2f} points. With 656 test cells one cell is 0.15 points, and the 95 % interval of an "
                    "accuracy near 88 % spans about +-2.5 points.")


# ------------------------------------------------------------------ lesson 09: what held
__all__ += ["check_held_count", "check_unsettled_tip"]


def check_held_count(answer, table) -> bool:
    """Lesson 09: how many tips of the `what_held` table held (verdict 'supported') in this run."""
    truth = int((table["verdict"] == "supported").sum())
    ok = answer is not None and int(answer) == truth
    return _verdict(answer, ok, "count the rows of the table whose verdict is 'supported' "
                    "((table.verdict == 'supported').sum()).",
                    f"{truth} of the {len(table)} tips held in this run.")


def check_unsettled_tip(answer, table) -> bool:
    """Lesson 09: the tip (its name) whose inconclusive claim had the widest interval (largest half-width); with no
    inconclusive claim, answer 'none'."""
    open_ = table[table["verdict"] == "inconclusive"]
    truth = "none" if open_.empty else str(open_.loc[open_["half_width"].idxmax(), "tip"])
    ok = answer is not None and str(answer).strip().lower() == truth.lower()
    return _verdict(answer, ok, "keep the rows whose verdict is 'inconclusive' and take the tip of the one with the "
                    "largest half_width (or 'none' if there is none).",
                    f"{truth!r}: that tip needs the most power (more seeds, cells or the gpu profile) to settle.")

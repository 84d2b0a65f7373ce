"""ipywidgets the lessons share, imported only when a widget is built. Each widget's callback is a plain function
in the library (`show_cells`, `arch_row`, `photo_top5`, `quick_transfer`, the `*_demo`s) that a notebook calls once
and the unit tests drive.

Every widget is one skeleton, `_control_panel`: controls -> an Output -> shown, each change of a control (or each
click of the button) calling a plain `show(**values)` that returns what to display. ipywidgets swallows what a
callback raises, so the panel keeps it: the returned box has `run()` (show the controls' current values; raises
what `show` raises), `error` (the last exception a callback raised, else None; it is also shown in the Output),
`shown` (what the last run displayed) and `out` (the Output)."""
from __future__ import annotations

import contextlib
import traceback
from typing import Callable

import numpy as np
import pandas as pd

from ..core.compat import renamed_kwargs
from ..core.data import BadImageError, open_image
from ..topics.imagenet import SAMPLE_PHOTOS, load_user_image, photo_top5, sample_photo
from ..studies.lesson02 import quick_transfer
from ..topics.zoo import arch_row
from .plots import plot_lines, show_images

__all__ = ["show_cells", "dataset_browser", "zoo_widget", "photo_widget", "transfer_widget", "show_augmented",
           "augment_widget", "imbalance_demo", "imbalance_widget", "optimizer_demo", "optimizer_widget", "crop_demo",
           "crop_widget", "prune_demo", "prune_widget", "threshold_demo", "threshold_widget"]

ANY = "any"


def _display(item) -> None:
    """Text is printed, a Figure displayed and closed (so it is drawn once), anything else displayed."""
    from IPython.display import display
    from matplotlib.figure import Figure
    if isinstance(item, str):
        print(item)
    elif isinstance(item, Figure):
        import matplotlib.pyplot as plt
        display(item)
        plt.close(item)
    else:
        display(item)


def _control_panel(controls: dict, show: Callable, button: str | None = None, rows: list | None = None):
    """The one widget skeleton: `controls` (name -> widget), an Output, and `show(**values)` -> what to display (one
    item or a tuple of them: text, Figures, tables) wired to every control's value (drawn once at the start) or,
    with `button`, to a button's clicks only. `rows`: lists of control names, one HBox each (a single control
    stands alone); the button ends the last row.

    Returns (box, out, run). `run(**overrides)` shows the controls' current values (updated by `overrides`) in
    `out` and returns what it displayed; what `show` raises is printed into `out`, kept in `box.error` and
    re-raised. The wired callbacks call `run` and let the exception go (ipywidgets would only log it), so
    `box.error` is how a test sees it."""
    import ipywidgets as w
    out = w.Output()
    items = dict(controls)
    rows = [list(controls)] if rows is None else [list(r) for r in rows]
    if button is not None:
        items["_button"] = w.Button(description=button)
        rows[-1].append("_button")
    lines = [items[r[0]] if len(r) == 1 else w.HBox([items[n] for n in r]) for r in rows]
    box = w.VBox([*lines, out])

    def run(**overrides):
        values = {k: c.value for k, c in controls.items()} | overrides
        error = None
        with out:
            out.clear_output(wait=True)
            try:
                shown = show(**values)
                shown = shown if isinstance(shown, tuple) else (shown,)
                for item in shown:
                    _display(item)
            except Exception as e:   # noqa: BLE001 - shown, kept and re-raised below, outside the Output
                error = e
                traceback.print_exception(e)
        if error is not None:
            box.error = error
            raise error
        box.shown = shown
        return shown

    def _wired(*_):
        with contextlib.suppress(Exception):   # already shown in the Output and kept in box.error
            run()

    box.run, box.out, box.error, box.shown = run, out, None, ()
    if button is None:
        for c in controls.values():
            c.observe(_wired, names="value")
        _wired()
    else:
        items["_button"].on_click(_wired)
    return box, out, run


def filter_cells(df: pd.DataFrame, label: str = ANY, module_type: str = ANY, prob: str = ANY) -> pd.DataFrame:
    """ELPV rows matching a binary label, module type (mono/poly) and defect probability ('0', '1/3', '2/3', '1')."""
    keep = pd.Series(True, index=df.index)
    for col, val in (("label_bin", label), ("type", module_type), ("label_4", prob)):
        if val != ANY:
            if val not in set(df[col]):
                raise ValueError(f"{col} has no value {val!r}: choose one of {_options(df, col)} or {ANY!r}")
            keep &= df[col] == val
    return df[keep]


def _options(df: pd.DataFrame, col: str) -> list:
    """A column's values in their natural order (categories as declared, e.g. defect levels 0, 1/3, 2/3, 1)."""
    s = df[col]
    return [c for c in s.cat.categories if c in set(s)] if isinstance(s.dtype, pd.CategoricalDtype) else sorted(set(s))


def show_cells(df: pd.DataFrame, label: str = ANY, module_type: str = ANY, prob: str = ANY, n: int = 12,
               seed: int = 0):
    """A grid of up to `n` random cells matching the filters (the dataset browser's callback); returns the Figure."""
    rows = filter_cells(df, label, module_type, prob)
    rows = rows.sample(min(n, len(rows)), random_state=seed) if len(rows) else rows
    titles = [f"{r.label_4} {r.type}" for r in rows.itertuples()]
    return show_images([open_image(p) for p in rows["path"]], titles, ncols=6,
                       suptitle=f"{len(rows)} of {len(filter_cells(df, label, module_type, prob))} matching cells")


def dataset_browser(df: pd.DataFrame):
    """Dropdowns for label, module type and defect probability plus a count slider; shows matching cells."""
    import ipywidgets as w
    opts = lambda col: [ANY] + _options(df, col)  # noqa: E731
    controls = dict(label=w.Dropdown(options=opts("label_bin"), description="label"),
                    module_type=w.Dropdown(options=opts("type"), description="module"),
                    prob=w.Dropdown(options=opts("label_4"), description="P(defect)"),
                    n=w.IntSlider(12, 1, 24, description="cells"),
                    seed=w.IntSlider(0, 0, 99, description="shuffle"))

    box, _, _ = _control_panel(controls, lambda **kw: show_cells(df, **kw),
                               rows=[["label", "module_type", "prob"], ["n", "seed"]])
    return box


def zoo_widget(df: pd.DataFrame):
    """A Dropdown of a `zoo_table`'s architectures that shows the chosen one's row (`arch_row`)."""
    import ipywidgets as w
    pick = w.Dropdown(options=list(df["arch"]), description="arch")
    box, _, _ = _control_panel(dict(arch=pick), lambda arch: arch_row(df, arch).to_frame().T)
    return box


def _photo_and_top5(model, img, title: str) -> tuple:
    """A Figure of `img` titled `title`, and the model's top-5 table on it (`photo_top5`)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(img)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig, photo_top5(model, img)


def photo_widget(model):
    """A Dropdown of sample photos and a FileUpload: shows the image and the model's top-5 table."""
    import ipywidgets as w
    pick, upload = w.Dropdown(options=SAMPLE_PHOTOS, description="photo"), w.FileUpload(accept="image/*")
    seen = dict(upload=upload.value)

    def _show(photo, upload):
        if upload is seen["upload"] or not upload:   # the photo changed (or a run): the chosen sample photo
            return _photo_and_top5(model, sample_photo(photo), photo)
        seen["upload"], f = upload, upload[-1]       # a new upload: the last file
        try:
            return _photo_and_top5(model, load_user_image(f["content"], f["name"]), f["name"])
        except BadImageError as e:
            return str(e)

    box, _, _ = _control_panel(dict(photo=pick, upload=upload), _show)
    return box


def transfer_widget(model, cfg, folder=None):
    """Sliders for data fraction and freeze depth (body groups frozen); each run of `quick_transfer` adds a point
    to a plot of balanced accuracy."""
    import ipywidgets as w

    from ..core.surgery import n_groups
    n_body = n_groups(model)
    frac = w.SelectionSlider(options=list(cfg.transfer.fractions), value=cfg.transfer.fractions[0], description="data fraction")
    depth = w.IntSlider(n_body, max(1, n_body - 3), n_body, description="frozen groups")
    rows = []

    def _show(frac, depth):
        rows.append(quick_transfer(model, cfg, frac, depth, folder, seed=cfg.seed))
        df = pd.DataFrame(rows)
        return df.round(3), plot_lines(df, "trainable_groups", "balanced_accuracy", hue="frac",
                                       title="quick experiments")

    box, _, _ = _control_panel(dict(frac=frac, depth=depth), _show, button="run")
    return box


# ------------------------------------------------------------------ lesson 03: augmentation


def show_augmented(img, name: str, magnitude: float | None = None, n: int = 8, seed: int = 0, img_size: int = 128):
    """A grid of `n` augmented copies of one image under transform `name` of `AUGMENTS` (the augmentation widget's
    callback); returns the Figure."""
    from ..topics.augment import AUGMENTS, augment_samples
    m = AUGMENTS[name].default if magnitude is None else magnitude
    x = augment_samples(img, name, m, n=n, seed=seed, img_size=img_size)
    return show_images([i.permute(1, 2, 0).numpy() for i in x], ncols=min(n, 8), inches=1.6,
                       suptitle=f"{name}, magnitude {m:g} ({AUGMENTS[name].unit}); seed {seed}")


def augment_widget(images: dict, img_size: int = 128):
    """Pick an image, a transform and its magnitude (slider over the transform's range): a live grid of
    augmented copies of the same image (`show_augmented`)."""
    import ipywidgets as w
    from ..topics.augment import AUGMENTS
    first = next(iter(AUGMENTS.values()))
    pick = w.Dropdown(options=list(images), description="image")
    name = w.Dropdown(options=list(AUGMENTS), description="transform")
    mag = w.FloatSlider(first.demo, min=first.lo, max=first.hi, step=(first.hi - first.lo) / 100,
                        description="magnitude")
    n, seed = w.IntSlider(8, 2, 16, description="copies"), w.IntSlider(0, 0, 99, description="seed")

    def _range(change):
        a = AUGMENTS[change["new"]]
        mag.max = max(mag.max, a.hi)
        mag.min, mag.step = a.lo, (a.hi - a.lo) / 100
        mag.max, mag.value = a.hi, a.demo

    def _show(image, transform, magnitude, copies, seed):
        return show_augmented(images[image], transform, magnitude, copies, seed, img_size)

    name.observe(_range, names="value")   # before the panel's observers: in range before any redraw
    box, _, _ = _control_panel(dict(image=pick, transform=name, magnitude=mag, copies=n, seed=seed), _show,
                               rows=[["image", "transform", "magnitude"], ["copies", "seed"]])
    return box


# ------------------------------------------------------------------ lesson 04: imbalanced data


def imbalance_demo(feats, ratio: float, remedy: str, epochs: int = 5, lr: float = 1e-2, seed: int = 0):
    """Train a head on cached features whose training set keeps `ratio` rare items per common one, with `remedy`
    (the imbalance widget's callback): (row of `head_remedy`, metrics table, confusion-matrix Figure)."""
    from ..core.measure import Evaluation
    from ..topics.imbalance import imbalanced_indices
    from ..studies.lesson04 import head_remedy, rarest, subset_train
    from .plots import plot_confusion
    names = np.array(feats.vocab)[feats.y_train.numpy()]
    harsh = subset_train(feats, imbalanced_indices(names, ratio, rarest(names), seed))
    row = head_remedy(harsh, remedy, epochs, lr, seed).row(probs=True)
    table = pd.Series({k: row[k] for k in ("n_train", "accuracy", "balanced_accuracy", "f1_macro",
                                           "minority_recall", "roc_auc")}, name=remedy).to_frame()
    ev = Evaluation.of(feats.vocab, row["y_true"], row["y_pred"], row["probs"])
    return row, table, plot_confusion(ev, title=f"{remedy}, 1 rare per {1 / ratio:.0f} common in training")


def imbalance_widget(feats, epochs: int = 5, lr: float = 1e-2):
    """Pick how rare the rare class is in training and a remedy, press train: metrics and confusion matrix
    (`imbalance_demo`)."""
    import ipywidgets as w
    from ..studies.lesson04 import HEAD_REMEDIES
    ratio = w.FloatLogSlider(value=1 / 20, base=10, min=-2, max=np.log10(0.4), step=0.05, description="rare/common",
                             readout_format=".3f")
    remedy = w.Dropdown(options=HEAD_REMEDIES, value="class weights (inverse)", description="remedy")

    def _show(ratio, remedy):
        try:
            _, table, fig = imbalance_demo(feats, ratio, remedy, epochs, lr)
        except ValueError as e:   # e.g. a ratio above the data's own: the message, not a traceback
            return str(e)
        return table.round(3), fig

    box, _, _ = _control_panel(dict(ratio=ratio, remedy=remedy), _show, button="train")
    return box


# ------------------------------------------------------------------ lesson 05: optimizers


def optimizer_demo(dls, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9, schedule: str = "one-cycle",
                   epochs: int = 2, seed: int = 0):
    """A quick run of the small network with `optimizer` (`momentum` for SGD and RMSprop), `lr` and `schedule`
    (the optimizer widget's callback): (run dict of `train_optimizer`, Figure of its training loss)."""
    from ..studies.lesson05 import loss_curves, train_optimizer
    from .plots import plot_lines
    kw = dict(momentum=momentum) if optimizer in ("sgd", "rmsprop") else {}
    run = train_optimizer(dls, optimizer, lr, epochs, seed, schedule, opt_kw=kw).row(history=True)
    curve = loss_curves(pd.DataFrame([run]))
    fig = plot_lines(curve, "step", "loss", title=f"{optimizer}, lr {lr:g}, {schedule}: balanced accuracy "
                     f"{run['balanced_accuracy']:.3f}" + ("" if run["finite"] else " (diverged)"))
    return run, fig


def optimizer_widget(dls, epochs: int = 2):
    """Pick an optimizer, its learning rate, momentum and schedule, press train: the training loss of a quick run
    (`optimizer_demo`)."""
    import ipywidgets as w
    from ..topics.optim import DEFAULT_LRS, OPTIMIZERS, SCHEDULES
    opt = w.Dropdown(options=list(OPTIMIZERS), value="sgd", description="optimizer")
    lr = w.FloatLogSlider(value=DEFAULT_LRS["sgd"], base=10, min=-5, max=1, step=0.25, description="lr",
                          readout_format=".0e")
    mom = w.FloatSlider(value=0.9, min=0, max=0.99, step=0.01, description="momentum")
    sched = w.Dropdown(options=SCHEDULES, value="one-cycle", description="schedule")
    opt.observe(lambda ch: setattr(lr, "value", DEFAULT_LRS[ch["new"]]), names="value")   # start from the usual lr

    def _show(optimizer, lr, momentum, schedule):
        return optimizer_demo(dls, optimizer, lr, momentum, schedule, epochs)[1]

    box, _, _ = _control_panel(dict(optimizer=opt, lr=lr, momentum=mom, schedule=sched), _show, button="train",
                               rows=[["optimizer", "lr"], ["momentum", "schedule"]])
    return box


# ------------------------------------------------------------------ lesson 06: ensembles and multi-crop


@renamed_kwargs(size="img_size", cls="minority")
def crop_demo(model, x, vocab, index: int = 0, img_size: int | None = None, minority: int = 0):
    """The 10 crops (`img_size` px, default 7/8 of the image) of validation image `index` of the normalised batch
    x (N, C, H, W), each titled with the model's probability of class `minority` (an index), and the average (the
    crop widget's callback): (table, Figure)."""
    from ..topics.ensemble import CROP_NAMES, crop_probs, ten_crop
    from .plots import show_images
    cls = minority
    img_size = img_size or int(0.875 * x.shape[-1])
    p = crop_probs(model, x[index:index + 1], img_size)[0]                           # (10, C)
    crops = ten_crop(x[index], img_size)
    lo, hi = crops.amin(), crops.amax()
    images = [((c - lo) / (hi - lo + 1e-8)).permute(1, 2, 0).numpy() for c in crops]
    fig = show_images(images, [f"{n}\nP({vocab[cls]}) {q:.2f}" for n, q in zip(CROP_NAMES, p[:, cls])], ncols=5,
                      inches=1.6, suptitle=f"image {index}: average P({vocab[cls]}) {p[:, cls].mean():.2f}")
    table = pd.DataFrame(p, index=list(CROP_NAMES), columns=[str(v) for v in vocab])
    table.loc["average"] = p.mean(0)
    return table, fig


@renamed_kwargs(cls="minority")
def crop_widget(model, x, vocab, minority: int = 0):
    """Pick a validation image: its 10 crops with the model's probability on each, and their average (`crop_demo`)."""
    import ipywidgets as w

    def _show(index):
        table, fig = crop_demo(model, x, vocab, index, minority=minority)
        return fig, table.round(3)

    box, _, _ = _control_panel(dict(index=w.IntSlider(0, 0, len(x) - 1, description="image")), _show)
    return box


# ------------------------------------------------------------------ lesson 07: pruning


def prune_demo(learn, img_size: int, ratio: float, reps: int = 3) -> pd.DataFrame:
    """The network of `learn` and a copy pruned by `ratio` (one step, global L1, no fine-tuning): params, MFLOPs,
    ms per batch and validation balanced accuracy of each (the pruning widget's callback)."""
    from ..core.measure import evaluate
    from ..core.train import learner
    from ..topics.prune import model_cost, prune_copy
    rows = []
    for name, model in (("trained", learn.model), (f"pruned {ratio:.0%}", prune_copy(learn.model, img_size, ratio))):
        cost = model_cost(model, img_size, learn.dls.bs, reps)
        ev = evaluate(learner(learn.dls, model))
        rows.append(dict(network=name, params=cost["params"], mflops=cost["flops"] / 1e6,
                         ms_per_batch=cost["ms_per_batch"], balanced_accuracy=ev.metrics["balanced_accuracy"]))
    return pd.DataFrame(rows).set_index("network")


def prune_widget(learn, img_size: int, reps: int = 3):
    """A pruning-ratio slider: size, cost and accuracy of the pruned network beside the trained one (`prune_demo`)."""
    import ipywidgets as w
    ratio = w.FloatSlider(0.5, min=0.0, max=0.9, step=0.1, description="ratio", continuous_update=False)
    box, _, _ = _control_panel(dict(ratio=ratio), lambda ratio: prune_demo(learn, img_size, ratio, reps).round(3))
    return box


# ------------------------------------------------------------------ lesson 08: the capstone


def threshold_demo(ev, threshold: float) -> pd.DataFrame:
    """The final model's validation metrics at the paper's threshold (0.5) and at `threshold` on the defect
    probability (the threshold widget's callback)."""
    from ..studies.lesson08 import threshold_metrics
    return pd.DataFrame([threshold_metrics(ev, t) for t in dict.fromkeys((0.5, float(threshold)))]).set_index("threshold")


def threshold_widget(ev):
    """A slider on the defect-probability threshold: accuracy, balanced accuracy, defects found and false alarms
    (`threshold_demo`)."""
    import ipywidgets as w
    t = w.FloatSlider(0.5, min=0.05, max=0.95, step=0.05, description="threshold", continuous_update=False)
    box, _, _ = _control_panel(dict(threshold=t), lambda threshold: threshold_demo(ev, threshold).round(3))
    return box


# ------------------------------------------------------------------ lesson 09: what held
__all__ += ["held_widget"]


def held_widget(table: pd.DataFrame):
    """Pick a verdict and a lesson: the tips of the course's `what_held` table that match (`held_view`)."""
    import ipywidgets as w
    from ..studies.lesson09 import held_view
    verdict = w.Dropdown(options=["all", *dict.fromkeys(table["verdict"])], description="verdict")
    lesson = w.Dropdown(options=["all", *dict.fromkeys(table["lesson"])], description="lesson")
    box, _, _ = _control_panel(dict(verdict=verdict, lesson=lesson),
                               lambda verdict, lesson: held_view(table, verdict, lesson).round(3))
    return box

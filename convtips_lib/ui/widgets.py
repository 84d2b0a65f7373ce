"""ipywidgets the lessons share, imported only when a widget is built. Each widget's callback is a plain function
in the library (`show_cells`, `arch_row`, `photo_top5`, `quick_transfer`) that a notebook calls once and the unit
tests drive."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.data import BadImageError, open_image
from ..topics.imagenet import SAMPLE_PHOTOS, load_user_image, photo_top5, sample_photo
from ..studies.lesson02 import quick_transfer
from ..topics.zoo import arch_row
from .plots import plot_lines, show_images

__all__ = ["filter_cells", "show_cells", "dataset_browser", "zoo_widget", "photo_widget", "transfer_widget"]

ANY = "any"


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

    def _show(**kw):
        import matplotlib.pyplot as plt
        show_cells(df, **kw)
        plt.show()

    out = w.interactive_output(_show, controls)
    return w.VBox([w.HBox(list(controls.values())[:3]), w.HBox(list(controls.values())[3:]), out])


def zoo_widget(df: pd.DataFrame):
    """A Dropdown of a `zoo_table`'s architectures that shows the chosen one's row (`arch_row`)."""
    import ipywidgets as w

    def _show(arch):
        from IPython.display import display
        display(arch_row(df, arch).to_frame().T)

    pick = w.Dropdown(options=list(df["arch"]), description="arch")
    return w.VBox([pick, w.interactive_output(_show, dict(arch=pick))])


def _show_photo(out, model, img, title: str) -> None:
    """Draw `img` and its top-5 table (`photo_top5`) into the Output widget `out`."""
    import matplotlib.pyplot as plt
    from IPython.display import display
    with out:
        out.clear_output(wait=True)
        fig, ax = plt.subplots(figsize=(3, 3))
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        plt.show()
        display(photo_top5(model, img))


def photo_widget(model):
    """A Dropdown of sample photos and a FileUpload: shows the image and the model's top-5 table."""
    import ipywidgets as w
    pick, upload = w.Dropdown(options=SAMPLE_PHOTOS, description="photo"), w.FileUpload(accept="image/*")
    out = w.Output()

    def _on_upload(change):
        f = change["new"][-1]
        try:
            _show_photo(out, model, load_user_image(f["content"], f["name"]), f["name"])
        except BadImageError as e:
            with out:
                out.clear_output()
                print(e)

    pick.observe(lambda ch: _show_photo(out, model, sample_photo(ch["new"]), ch["new"]), names="value")
    upload.observe(_on_upload, names="value")
    _show_photo(out, model, sample_photo(pick.value), pick.value)
    return w.VBox([w.HBox([pick, upload]), out])


def transfer_widget(model, cfg, folder=None):
    """Sliders for data fraction and freeze depth (body groups frozen); each run of `quick_transfer` adds a point
    to a plot of balanced accuracy."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from ..core.surgery import n_groups
    n_body = n_groups(model)
    frac = w.SelectionSlider(options=list(cfg.transfer.fractions), value=cfg.transfer.fractions[0], description="data fraction")
    depth = w.IntSlider(n_body, max(1, n_body - 3), n_body, description="frozen groups")
    button, out, rows = w.Button(description="run"), w.Output(), []

    def _run(_=None):
        rows.append(quick_transfer(model, cfg, frac.value, depth.value, folder, seed=cfg.seed))
        with out:
            out.clear_output(wait=True)
            df = pd.DataFrame(rows)
            display(df.round(3))
            plot_lines(df, "trainable_groups", "balanced_accuracy", hue="frac", title="quick experiments")
            plt.show()

    button.on_click(_run)
    return w.VBox([w.HBox([frac, depth, button]), out])


# ------------------------------------------------------------------ lesson 03: augmentation
__all__ += ["show_augmented", "augment_widget"]


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
        import matplotlib.pyplot as plt
        show_augmented(images[image], transform, magnitude, copies, seed, img_size)
        plt.show()

    name.observe(_range, names="value")
    out = w.interactive_output(_show, dict(image=pick, transform=name, magnitude=mag, copies=n, seed=seed))
    return w.VBox([w.HBox([pick, name, mag]), w.HBox([n, seed]), out])


# ------------------------------------------------------------------ lesson 04: imbalanced data
__all__ += ["imbalance_demo", "imbalance_widget"]


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
    import matplotlib.pyplot as plt
    from IPython.display import display
    from ..studies.lesson04 import HEAD_REMEDIES
    ratio = w.FloatLogSlider(value=1 / 20, base=10, min=-2, max=np.log10(0.4), step=0.05, description="rare/common",
                             readout_format=".3f")
    remedy = w.Dropdown(options=HEAD_REMEDIES, value="class weights (inverse)", description="remedy")
    button, out = w.Button(description="train"), w.Output()

    def _run(_=None):
        with out:
            out.clear_output(wait=True)
            try:
                _, table, fig = imbalance_demo(feats, ratio.value, remedy.value, epochs, lr)
            except ValueError as e:   # e.g. a ratio above the data's own
                print(e)
                return
            display(table.round(3))
            display(fig)
            plt.close(fig)

    button.on_click(_run)
    return w.VBox([w.HBox([ratio, remedy, button]), out])


# ------------------------------------------------------------------ lesson 05: optimizers
__all__ += ["optimizer_demo", "optimizer_widget"]


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
    import matplotlib.pyplot as plt
    from IPython.display import display
    from ..topics.optim import DEFAULT_LRS, OPTIMIZERS, SCHEDULES
    opt = w.Dropdown(options=list(OPTIMIZERS), value="sgd", description="optimizer")
    lr = w.FloatLogSlider(value=DEFAULT_LRS["sgd"], base=10, min=-5, max=1, step=0.25, description="lr",
                          readout_format=".0e")
    mom = w.FloatSlider(value=0.9, min=0, max=0.99, step=0.01, description="momentum")
    sched = w.Dropdown(options=SCHEDULES, value="one-cycle", description="schedule")
    button, out = w.Button(description="train"), w.Output()
    opt.observe(lambda ch: setattr(lr, "value", DEFAULT_LRS[ch["new"]]), names="value")   # start from the usual lr

    def _run(_=None):
        with out:
            out.clear_output(wait=True)
            _, fig = optimizer_demo(dls, opt.value, lr.value, mom.value, sched.value, epochs)
            display(fig)
            plt.close(fig)

    button.on_click(_run)
    return w.VBox([w.HBox([opt, lr]), w.HBox([mom, sched, button]), out])


# ------------------------------------------------------------------ lesson 06: ensembles and multi-crop
__all__ += ["crop_demo", "crop_widget"]


def crop_demo(model, x, vocab, index: int = 0, size: int | None = None, cls: int = 0):
    """The 10 crops of validation image `index` of the normalised batch x (N, C, H, W), each titled with the model's
    probability of class `cls`, and the average (the crop widget's callback): (table, Figure)."""
    from ..topics.ensemble import CROP_NAMES, crop_probs, ten_crop
    from .plots import show_images
    size = size or int(0.875 * x.shape[-1])
    p = crop_probs(model, x[index:index + 1], size)[0]                               # (10, C)
    crops = ten_crop(x[index], size)
    lo, hi = crops.amin(), crops.amax()
    images = [((c - lo) / (hi - lo + 1e-8)).permute(1, 2, 0).numpy() for c in crops]
    fig = show_images(images, [f"{n}\nP({vocab[cls]}) {q:.2f}" for n, q in zip(CROP_NAMES, p[:, cls])], ncols=5,
                      inches=1.6, suptitle=f"image {index}: average P({vocab[cls]}) {p[:, cls].mean():.2f}")
    table = pd.DataFrame(p, index=list(CROP_NAMES), columns=[str(v) for v in vocab])
    table.loc["average"] = p.mean(0)
    return table, fig


def crop_widget(model, x, vocab, cls: int = 0):
    """Pick a validation image: its 10 crops with the model's probability on each, and their average (`crop_demo`)."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display
    pick, out = w.IntSlider(0, 0, len(x) - 1, description="image"), w.Output()

    def _show(change=None):
        with out:
            out.clear_output(wait=True)
            table, fig = crop_demo(model, x, vocab, pick.value, cls=cls)
            display(fig)
            plt.close(fig)
            display(table.round(3))

    pick.observe(_show, names="value")
    _show()
    return w.VBox([pick, out])


# ------------------------------------------------------------------ lesson 07: pruning
__all__ += ["prune_demo", "prune_widget"]


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
    from IPython.display import display
    ratio, out = w.FloatSlider(0.5, min=0.0, max=0.9, step=0.1, description="ratio", continuous_update=False), \
        w.Output()

    def _show(change=None):
        with out:
            out.clear_output(wait=True)
            display(prune_demo(learn, img_size, ratio.value, reps).round(3))

    ratio.observe(_show, names="value")
    _show()
    return w.VBox([ratio, out])


# ------------------------------------------------------------------ lesson 08: the capstone
__all__ += ["threshold_demo", "threshold_widget"]


def threshold_demo(ev, threshold: float) -> pd.DataFrame:
    """The final model's validation metrics at the paper's threshold (0.5) and at `threshold` on the defect
    probability (the threshold widget's callback)."""
    from ..studies.lesson08 import threshold_metrics
    return pd.DataFrame([threshold_metrics(ev, t) for t in dict.fromkeys((0.5, float(threshold)))]).set_index("threshold")


def threshold_widget(ev):
    """A slider on the defect-probability threshold: accuracy, balanced accuracy, defects found and false alarms
    (`threshold_demo`)."""
    import ipywidgets as w
    from IPython.display import display
    t, out = w.FloatSlider(0.5, min=0.05, max=0.95, step=0.05, description="threshold", continuous_update=False), \
        w.Output()

    def _show(change=None):
        with out:
            out.clear_output(wait=True)
            display(threshold_demo(ev, t.value).round(3))

    t.observe(_show, names="value")
    _show()
    return w.VBox([t, out])

"""Pruning (lesson 07): rank convolution filters (L1, L2, mean activation, APoZ), remove the weakest with
torch-pruning (global, iterative, with fine-tuning between steps), measure what the smaller network costs, and export
the pruned network (state dict and ONNX). The lesson's networks and block removal are in `studies.lesson07`."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torch_pruning as tp
from fastai.callback.core import Callback
from torch import nn

from ..core.measure import count_flops, count_params, evaluate, latency, timed_in_turns
from ..core.models import narrow_to, to_channels_last
from ..core.store import atomic_write, save_tensors
from ..core.train import fit, tune_loader

__all__ = ["filter_scores", "rank_agreement", "IMPORTANCES", "ScoreImportance", "ActivationImportance", "make_pruner",
           "ranked_channels", "model_cost", "ranking_batches", "prune_iteratively", "prune_once", "prune_copy",
           "pruning_row", "export_check", "export_pruned", "load_pruned", "onnx_latency", "RANKINGS", "Distill"]

RANKINGS = ("l1", "l2", "mean_activation", "apoz")   # per-filter scores; a high score keeps the filter (APoZ negated)


def l1_order(conv: nn.Conv2d) -> np.ndarray:
    """Filter indices of `conv` from the smallest to the largest L1 norm of their weights (Li et al., ICLR 2017):
    the order in which the filter-pruning recipe removes them."""
    return conv.weight.detach().abs().sum((1, 2, 3)).argsort(stable=True).numpy()


def _conv_bn_pairs(model: nn.Module) -> list:
    """(name, conv, bn) for every Conv2d followed, in module order, by a BatchNorm2d of the same width."""
    mods, pairs = list(model.named_modules()), []
    for (name, m), (_, nxt) in zip(mods, mods[1:]):
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels:
            pairs.append((name, m, nxt))
    return pairs


def filter_scores(model: nn.Module, batches, bs: int = 64) -> pd.DataFrame:
    """One row per conv filter: layer, filter, l1 and l2 (weight norms), mean_activation and apoz (the Average
    Percentage of Zeros, Hu et al. 2016) of relu(BN(conv)) over the validation images: `batches` is a DataLoader
    (batches of (x, y)) or a tensor of images (N, C, H, W), fed `bs` at a time.

    torch-pruning's importances score whole coupled groups for its pruner; the per-filter statistics of one layer
    are a few lines of forward hooks, written here, and `ScoreImportance.of(scores, ranking)` hands them to it."""
    pairs, sums = _conv_bn_pairs(model), {}

    def hook(name):
        def record(module, inp, out):
            a = torch.relu(out)
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0], s[1], s[2] = s[0] + a.sum((0, 2, 3)), s[1] + (a <= 0).float().sum((0, 2, 3)), s[2] + a[:, 0].numel()
        return record

    hooks = [bn.register_forward_hook(hook(name)) for name, _, bn in pairs]
    model.eval()
    dev = next(model.parameters()).device
    try:
        with torch.no_grad():
            for b in (batches.split(bs) if torch.is_tensor(batches) else batches):
                model((b if torch.is_tensor(b) else b[0]).as_subclass(torch.Tensor).to(dev))
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, conv, _ in pairs:
        w, (act, zeros, n) = conv.weight.detach(), sums[name]
        rows.append(pd.DataFrame(dict(layer=name, filter=np.arange(conv.out_channels),
                                      l1=w.abs().sum((1, 2, 3)).cpu().numpy(),
                                      l2=w.pow(2).sum((1, 2, 3)).sqrt().cpu().numpy(),
                                      mean_activation=(act / n).cpu().numpy(), apoz=(zeros / n).cpu().numpy())))
    return pd.concat(rows, ignore_index=True)


def rank_agreement(scores: pd.DataFrame, rankings=RANKINGS) -> pd.DataFrame:
    """Spearman rank correlation (rankings x rankings) of the per-filter scores within each layer, averaged over
    layers weighted by their filters; APoZ enters negated (many zeros = a weak filter)."""
    s = scores.assign(apoz=-scores["apoz"])
    per_layer = [(g[list(rankings)].corr(method="spearman"), len(g)) for _, g in s.groupby("layer", sort=False)]
    total = sum(n for _, n in per_layer)
    return sum(c.fillna(0) * n for c, n in per_layer) / total


def check_ratio(ratio: float) -> float:
    """`ratio` as a float if it lies in [0, 1), else a ValueError saying what a pruning ratio is."""
    if not isinstance(ratio, (int, float)) or not 0 <= float(ratio) < 1:
        raise ValueError(f"pruning ratio must be a number in [0, 1), the share of channels to remove (0.5 removes "
                         f"half), got {ratio!r}")
    return float(ratio)


class ScoreImportance(tp.importance.Importance):
    """A torch-pruning importance from per-filter scores measured beforehand, {conv layer name: (out_channels,)
    scores}, high keeps: e.g. `ScoreImportance.of(filter_scores(model, dls.valid), 'apoz')`. A group scores each
    channel by the mean over its scored convs, divided by the group's mean (as torch-pruning's magnitude importance
    normalises) so that the global ranking compares layers fairly; a group without a scored conv is not pruned."""

    def __init__(self, scores: dict):
        self.scores = {name: torch.tensor(np.asarray(s, dtype=np.float64)) for name, s in scores.items()}
        self._names = {}

    @classmethod
    def of(cls, scores: pd.DataFrame, ranking: str) -> "ScoreImportance":
        """From `filter_scores`' table and one of `RANKINGS`; APoZ enters as 1 - APoZ (many zeros = weak). Ties
        (APoZ counts zeros; a dead filter's mean activation is 0) are broken by the L1 norm, a millionth of the
        score (kept in float64): torch-pruning removes every channel tied at its threshold, which would miss the share
        asked for."""
        if ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {ranking!r}: choose one of {', '.join(RANKINGS)}")
        l1 = scores["l1"] / scores.groupby("layer", sort=False)["l1"].transform("max").clip(lower=1e-12)
        col = (1 - scores["apoz"] if ranking == "apoz" else scores[ranking]) + 1e-6 * l1
        return cls({layer: col[idx].to_numpy() for layer, idx in scores.groupby("layer", sort=False).groups.items()})

    def bind(self, model: nn.Module) -> "ScoreImportance":
        """Tie the layer names to the modules of `model`, the network being pruned (`make_pruner` does it)."""
        self._names = {m: name for name, m in model.named_modules()}
        return self

    def measure(self) -> None:
        """Bring the scores up to date with the network (nothing to do: they were measured beforehand)."""

    def layer_scores(self, name: str, conv: nn.Conv2d) -> torch.Tensor:
        """(out_channels,) scores of the conv layer `name`; refused when the layer no longer has that many filters."""
        s = self.scores[name]
        if len(s) != conv.out_channels:
            raise ValueError(f"{len(s)} scores for the {conv.out_channels} filters of {name}: the layer was pruned "
                             "since they were measured. Measure again (filter_scores), or prune with "
                             "ActivationImportance, which measures before every step")
        return s

    def _scored(self, item) -> str | None:
        """The name of a group item's conv layer when its filters (output channels) are scored here."""
        name = self._names.get(item.dep.layer)
        roots = item.root_idxs
        ok = item.dep.pruning_fn == tp.prune_conv_out_channels and roots is not None and None not in roots
        return name if ok and name in self.scores else None

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """(n,) importance of the n channels of `group` (its first item's), or None when no conv of it is scored."""
        self.measure()
        n = len(group[0].idxs)
        total, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for item in group:
            if (name := self._scored(item)) is not None:
                root = torch.as_tensor(item.root_idxs, dtype=torch.long)
                total.index_add_(0, root, self.layer_scores(name, item.dep.layer)[list(item.idxs)])
                count.index_add_(0, root, torch.ones(len(root), dtype=torch.float64))
        if not count.any():
            return None
        imp = total / count.clamp(min=1)
        return imp / imp.mean() if imp.mean() > 0 else imp


class ActivationImportance(ScoreImportance):
    """A `ScoreImportance` that `filter_scores` measures on `batches` (a DataLoader or images (N, 3, H, W)) by
    `ranking` ('mean_activation', 'apoz', ...), again whenever the network's widths have changed: each step of
    iterative pruning ranks the filters that are left."""

    def __init__(self, batches, ranking: str = "mean_activation", bs: int = 64):
        super().__init__({})
        self.batches, self.ranking, self.bs, self._model, self._widths = batches, ranking, bs, None, None

    def bind(self, model: nn.Module) -> "ActivationImportance":
        """Measure on `model`, the network being pruned (`make_pruner` does it)."""
        self._model, self._widths = model, None
        return super().bind(model)

    def measure(self) -> None:
        """Measure the scores on the bound network again if any of its layers changed width since the last time."""
        if self._model is None:
            raise ValueError("ActivationImportance measures the network it prunes: bind(model) first (make_pruner "
                             "does it)")
        widths = tuple(m.out_channels for m in self._model.modules() if isinstance(m, nn.Conv2d))
        if widths != self._widths:
            was_training = self._model.training
            self.scores = ScoreImportance.of(filter_scores(self._model, self.batches, self.bs), self.ranking).scores
            self._model.train(was_training)
            self._widths = widths


IMPORTANCES = ("l1", "l2", "random", "mean_activation", "apoz")   # torch-pruning's magnitude (L1, L2) and random
# importances, and `ActivationImportance` by a ranking measured on images


def _importance(importance, model: nn.Module, batches):
    """The torch-pruning importance `importance` names (or is), ready to prune `model`."""
    if isinstance(importance, ScoreImportance):
        return importance.bind(model)
    if callable(importance):
        return importance
    factories = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
                 "l2": lambda: tp.importance.MagnitudeImportance(p=2),
                 "random": lambda: tp.importance.RandomImportance()}
    if importance in ("mean_activation", "apoz"):
        if batches is None:
            raise ValueError(f"importance {importance!r} is measured on images: pass batches= (a DataLoader such as "
                             "dls.valid, or images (N, 3, H, W))")
        return ActivationImportance(batches, importance).bind(model)
    if importance not in factories:
        raise ValueError(f"unknown importance {importance!r}: choose one of {', '.join(IMPORTANCES)}, or pass a "
                         "tp.importance.Importance")
    return factories[importance]()


def make_pruner(model: nn.Module, img_size: int, ratio: float, steps: int = 1, importance="l1", batches=None,
                global_ranking: bool = True):
    """torch-pruning's MetaPruner for `model`: global ranking over all conv layers (or, `global_ranking=False`, the
    share `ratio` of every layer's channels) by `importance` (a name of
    `IMPORTANCES`, or a `tp.importance.Importance` such as `ScoreImportance`; 'mean_activation' and 'apoz' are
    measured on `batches`), removing the share `ratio` of channels in `steps` equal steps (one per
    `pruner.step()`); the classifier's outputs and at least 10 % of every layer are kept."""
    ratio = check_ratio(ratio)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    example = torch.randn(1, 3, img_size, img_size, device=next(model.parameters()).device)
    return tp.pruner.MetaPruner(model, example, importance=_importance(importance, model, batches),
                                pruning_ratio=ratio, global_pruning=global_ranking, iterative_steps=steps,
                                max_pruning_ratio=0.9, ignored_layers=head)


def ranked_channels(model: nn.Module, img_size: int) -> int:
    """The channels `make_pruner` ranks globally in `model`, the total its `ratio` is a share of: one per channel of
    each group of coupled layers (the channels a shortcut adds together count once; the classifier's outputs are
    kept). Counted on a copy: tracing the graph runs `model` once, which would move its BatchNorm statistics."""
    pruner = make_pruner(copy.deepcopy(model).eval(), img_size, 0.0)
    return sum(len(g[0].idxs) for g in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                                 root_module_types=pruner.root_module_types))


def model_cost(model: nn.Module, img_size: int, bs: int = 32, reps: int = 5) -> dict:
    """params, FLOPs (one image) and CPU latency (median ms per batch of `bs`, and every timing) of `model`; on a
    GPU machine also gpu_ms_per_batch. Timed in the layout the network runs fastest in (`to_channels_last`), whatever
    layout pruning left its weights in."""
    cpu = to_channels_last(copy.deepcopy(model).cpu())
    lat = latency(cpu, img_size, bs=bs, reps=reps)
    out = dict(params=count_params(model), flops=count_flops(cpu, img_size), ms_per_batch=lat["ms_per_batch"],
               times_ms=lat["times_ms"])
    if next(model.parameters()).is_cuda:
        out["gpu_ms_per_batch"] = latency(model, img_size, bs=bs, reps=reps)["ms_per_batch"]
    return out


def pruning_row(learn, img_size: int, reps: int = 5, **extra) -> dict:
    """`extra`, `model_cost` of learn.model and its validation y_true, y_pred and metrics: one row of a table."""
    ev = evaluate(learn)
    return dict(**extra, **model_cost(learn.model, img_size, learn.dls.bs, reps), y_true=ev.y_true,
                y_pred=ev.y_pred, **ev.metrics)


def ranking_batches(dls):
    """The images an activation ranking (mean activation, APoZ) is measured on, since it chooses which filters go:
    the tune cells (`dls.tune`) when the DataLoaders have them, else the training images; never the validation
    cells that judge the pruned network."""
    tune = tune_loader(dls)
    return tune if tune is not None else dls.train


class Distill(Callback):
    """Knowledge distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531) from `teacher`, e.g. the network
    before pruning, while the Learner trains: the loss becomes (1 - alpha) x the Learner's own loss + alpha x T^2 x
    KL(teacher || student), both (N, C) logits divided by the temperature `T` (T^2 keeps the soft term's gradients
    the size of the hard term's). The teacher sees the same augmented batch, in eval mode and without gradients;
    validation keeps the plain loss. Written by hand: fastai has no distillation callback (fasterai, a separate
    package, has one)."""
    def __init__(self, teacher: nn.Module, alpha: float = 0.5, T: float = 4.0):
        if not 0 < alpha <= 1 or T <= 0:
            raise ValueError(f"Distill needs 0 < alpha <= 1 and T > 0, got alpha={alpha!r}, T={T!r}")
        self.teacher, self.alpha, self.T = teacher, float(alpha), float(T)

    def before_fit(self):
        self._was_training = self.teacher.training
        self.teacher.to(self.dls.device).eval()

    def after_loss(self):
        if not self.training or not len(self.yb):
            return
        with torch.no_grad():
            soft = F.log_softmax(self.teacher(*self.xb).float() / self.T, dim=1)
        kd = F.kl_div(F.log_softmax(self.pred.float() / self.T, dim=1), soft, log_target=True,
                      reduction="batchmean") * self.T ** 2
        self.learn.loss_grad = (1 - self.alpha) * self.loss_grad + self.alpha * kd
        self.learn.loss = self.learn.loss_grad.detach().clone()

    def after_fit(self):
        self.teacher.train(self._was_training)


def _prune_and_fine_tune(learn, pruner, epochs: int, lr: float, teacher: nn.Module | None = None) -> float:
    """One `pruner.step()` on learn.model, then `epochs` of fine-tuning at `lr` (distilled from `teacher` when given,
    `Distill`): the balanced accuracy in between."""
    pruner.step()
    learn.opt = None                           # the pruned tensors are new parameters: a fresh optimizer
    before = evaluate(learn).metrics["balanced_accuracy"]
    cb = Distill(teacher) if teacher is not None else None
    with learn.added_cbs(cb or []):
        fit(learn, epochs, lr)
    return before


def prune_iteratively(learn, img_size: int, ratio: float, steps: int, epochs: int, lr: float, reps: int = 5,
                      importance="l1", teacher: nn.Module | None = None, global_ranking: bool = True) -> pd.DataFrame:
    """The recipe of Li et al.: prune the weakest channels globally, fine-tune `epochs` at `lr`, repeat `steps` times
    until the share `ratio` is gone. One row per step (step 0: the trained network): params, flops, ms_per_batch,
    times_ms, y_true, y_pred and metrics after fine-tuning, `pruned_ba` (balanced accuracy before it) and `model`
    (a CPU copy of the network at that step). `importance` as `make_pruner`'s, an activation ranking measured on
    `ranking_batches` (the tune cells); with `teacher` (e.g. the network before pruning) every fine-tuning distils
    from it (`Distill`); `global_ranking` as `make_pruner`'s."""
    pruner = make_pruner(learn.model, img_size, ratio, steps, importance, ranking_batches(learn.dls), global_ranking)
    rows = [pruning_row(learn, img_size, reps, step=0, ratio=0.0, pruned_ba=np.nan,
                        model=copy.deepcopy(learn.model).cpu())]
    for k in range(1, steps + 1):
        before = _prune_and_fine_tune(learn, pruner, epochs, lr, teacher)
        rows.append(pruning_row(learn, img_size, reps, step=k, ratio=ratio * k / steps, pruned_ba=before))
        rows[-1]["model"] = copy.deepcopy(learn.model).cpu()
    return pd.DataFrame(rows)


def prune_once(learn, img_size: int, ratio: float, epochs: int, lr: float, reps: int = 5,
               importance="l1", teacher: nn.Module | None = None, global_ranking: bool = True) -> dict:
    """One-shot pruning: remove the share `ratio` in one step, then fine-tune `epochs` at `lr` (give it the
    iterative run's total fine-tuning for a fair comparison), distilled from `teacher` when given (`Distill`). A row
    like `prune_iteratively`'s; an activation ranking is measured on `ranking_batches` (the tune cells);
    `global_ranking` as `make_pruner`'s."""
    pruner = make_pruner(learn.model, img_size, ratio, 1, importance, ranking_batches(learn.dls), global_ranking)
    before = _prune_and_fine_tune(learn, pruner, epochs, lr, teacher)
    return pruning_row(learn, img_size, reps, step=1, ratio=ratio, pruned_ba=before)


def prune_copy(model: nn.Module, img_size: int, ratio: float, importance="l1", batches=None) -> nn.Module:
    """A pruned copy of `model` (one step, no fine-tuning; `importance`, `batches` as `make_pruner`'s); `model`
    itself is left as it was."""
    out = copy.deepcopy(model)
    if check_ratio(ratio) > 0:
        make_pruner(out, img_size, ratio, 1, importance, batches).step()
    return out


def export_pruned(model: nn.Module, folder, img_size: int, name: str = "pruned") -> dict:
    """Write `model`'s state dict (`<name>.pth`) and an ONNX graph (`<name>.onnx`, batch size free), each atomically;
    their paths."""
    folder, model = Path(folder), copy.deepcopy(model).cpu().eval()
    pth = save_tensors(folder / f"{name}.pth", model.state_dict())
    onnx = io.BytesIO()
    with warnings.catch_warnings():   # the TorchScript-based exporter: no onnxscript needed, fine for plain convnets
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(1, 3, img_size, img_size),), onnx, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    return dict(state_dict=pth, onnx=atomic_write(folder / f"{name}.onnx", onnx.getvalue()))


def load_pruned(model: nn.Module, path) -> nn.Module:
    """Load a pruned network's state dict (`torch.load(weights_only=True)`) into `model` (`narrow_to`).

    torch-pruning's own `tp.state_dict` pickles module objects, which weights_only loading refuses; the weights'
    shapes are all a plain state dict needs to rebuild the layers."""
    return narrow_to(model, torch.load(path, map_location="cpu", weights_only=True))


def export_check(model: nn.Module, paths: dict, fresh: nn.Module, x: torch.Tensor) -> dict:
    """Largest |difference| between `model`'s outputs on x (N, 3, H, W) and those of the exported files: the state
    dict loaded into `fresh` (an unpruned network of the same architecture) and the ONNX graph in onnxruntime."""
    x = x.as_subclass(torch.Tensor).cpu()
    with torch.no_grad():
        ref = copy.deepcopy(model).cpu().eval()(x)
        reloaded = load_pruned(fresh, paths["state_dict"])(x)
    return dict(reloaded_max_diff=float((reloaded - ref).abs().max()),
                onnx_max_diff=float(np.abs(onnx_outputs(paths["onnx"], x) - ref.numpy()).max()))


def _session(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_outputs(path, x: torch.Tensor) -> np.ndarray:
    """The ONNX graph at `path` run by onnxruntime (CPU) on x (N, 3, H, W): its outputs (N, n_out)."""
    s = _session(path)
    return s.run(None, {s.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]


def onnx_latency(paths: dict, img_size: int, bs: int = 32, reps: int = 5) -> dict:
    """{name: every timed onnxruntime (CPU) pass, ms per batch of `bs`} for the ONNX graphs `paths` {name: path},
    timed in turns (one pass of each per round, after two warm-up passes) so that a busy moment hits them all."""
    sessions = {k: _session(p) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((bs, 3, img_size, img_size), dtype=np.float32)
    return timed_in_turns({k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()},
                          reps, warmup=2)

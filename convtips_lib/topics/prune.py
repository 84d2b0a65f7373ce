"""Pruning (lesson 07): rank convolution filters (L1, L2, mean activation, APoZ), remove the weakest with
torch-pruning (global, iterative, with fine-tuning between steps), measure what the smaller network costs, remove
whole blocks from a residual and a plain network, and export the pruned network (state dict and ONNX)."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.layers import ConvLayer
from torch import nn

from ..core.env import seed_everything
from ..core.measure import bootstrap, count_flops, count_params, evaluate, latency, timed_in_turns
from ..core.store import atomic_write, save_tensors
from ..core.train import fit, learner

__all__ = ["Block", "prunable_net", "removable_blocks", "without_block", "l1_order", "filter_scores",
           "rank_agreement", "IMPORTANCES", "make_pruner", "check_ratio", "model_cost", "prune_iteratively",
           "prune_once", "prune_copy", "narrow_to", "pruning_row", "export_check", "block_removal", "export_pruned", "load_pruned",
           "onnx_outputs", "onnx_latency", "RANKINGS", "train_from_scratch", "fresh_learner", "first_reaching",
           "removal_gap"]

RANKINGS = ("l1", "l2", "mean_activation", "apoz")   # per-filter scores; a high score keeps the filter (APoZ negated)


class Block(nn.Module):
    """Two 3x3 conv-BN layers on (B, C, H, W) -> (B, C, H, W): relu(f(x) + x) with the shortcut (a ResNet basic
    block, He et al. 2016), relu(f(x)) without it (a plain, VGG-like pair of layers)."""

    def __init__(self, c: int, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.body = nn.Sequential(ConvLayer(c, c), ConvLayer(c, c, act_cls=None))

    def forward(self, x):
        y = self.body(x)
        return torch.relu(y + x if self.residual else y)


def prunable_net(n_out: int, residual: bool = True, widths=(32, 64, 128, 256), depth: int = 2) -> nn.Sequential:
    """A small ConvNet from a random init: a stride-2 stem, then per width a stride-2 conv and `depth` `Block`s, then
    pooling and a linear head. `residual=False` is the same network without shortcuts (the same parameters)."""
    layers, c = [ConvLayer(3, widths[0], stride=2)], widths[0]
    for w in widths:
        layers += [ConvLayer(c, w, stride=2)] + [Block(w, residual) for _ in range(depth)]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_out))


def train_from_scratch(dls, residual: bool, widths, depth: int, epochs: int, lrs=(3e-3,), seed: int = 0):
    """A `prunable_net` trained from a random init with one-cycle (Adam) at each peak learning rate of `lrs`; the
    run with the best validation balanced accuracy is kept: its Learner, with `learn.lr` and `learn.lr_sweep`
    ({lr: balanced accuracy})."""
    runs = {}
    for lr in ([lrs] if isinstance(lrs, (int, float)) else lrs):
        seed_everything(seed)                       # the same initial weights at every learning rate
        learn = learner(dls, prunable_net(dls.c, residual, widths, depth), seed=seed)
        fit(learn, epochs, lr)
        runs[float(lr)] = learn
    sweep = {lr: learn.history.rows[-1]["balanced_accuracy"] for lr, learn in runs.items()}
    best = max(sweep, key=sweep.get)
    runs[best].lr, runs[best].lr_sweep = best, sweep
    return runs[best]


def fresh_learner(learn, seed: int = 0):
    """A new Learner on `learn`'s data with a deep copy of its model (to prune while keeping the original)."""
    new = learner(learn.dls, copy.deepcopy(learn.model), seed=seed)
    new.lr = getattr(learn, "lr", None)
    return new


def removable_blocks(model: nn.Module) -> list:
    """Names of the `Block`s of `model`: each keeps its input's shape, so it can be removed (replaced by identity)."""
    return [name for name, m in model.named_modules() if isinstance(m, Block)]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule `name` (dotted) of `model` by `new`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def without_block(model: nn.Module, name: str) -> nn.Module:
    """A copy of `model` with `Block` `name` replaced by the identity: x + f(x) -> x with the shortcut, f(x) -> x
    without (Veit et al., NeurIPS 2016)."""
    if name not in removable_blocks(model):
        raise ValueError(f"{name!r} is not a removable block: choose one of {', '.join(removable_blocks(model))}")
    out = copy.deepcopy(model)
    _set_module(out, name, nn.Identity())
    return out


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
    are a few lines of forward hooks, written here."""
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


def _importance(name: str):
    import torch_pruning as tp
    factories = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
                 "l2": lambda: tp.importance.MagnitudeImportance(p=2),
                 "random": lambda: tp.importance.RandomImportance()}
    if name not in factories:
        raise ValueError(f"unknown importance {name!r}: choose one of {', '.join(factories)}")
    return factories[name]()


IMPORTANCES = ("l1", "l2", "random")   # torch-pruning's magnitude (L1, L2) and random importances


def make_pruner(model: nn.Module, img_size: int, ratio: float, steps: int = 1, importance: str = "l1"):
    """torch-pruning's MetaPruner for `model`: global ranking over all conv layers by `importance`, removing the
    share `ratio` of channels in `steps` equal steps (one per `pruner.step()`); the classifier's outputs and at least
    10 % of every layer are kept."""
    import torch_pruning as tp
    ratio = check_ratio(ratio)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    example = torch.randn(1, 3, img_size, img_size, device=next(model.parameters()).device)
    return tp.pruner.MetaPruner(model, example, importance=_importance(importance), pruning_ratio=ratio,
                                global_pruning=True, iterative_steps=steps, max_pruning_ratio=0.9,
                                ignored_layers=head)


def model_cost(model: nn.Module, img_size: int, bs: int = 32, reps: int = 5) -> dict:
    """params, FLOPs (one image) and CPU latency (median ms per batch of `bs`, and every timing) of `model`; on a
    GPU machine also gpu_ms_per_batch."""
    cpu = copy.deepcopy(model).cpu()
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


def _prune_and_fine_tune(learn, pruner, epochs: int, lr: float) -> float:
    """One `pruner.step()` on learn.model, then `epochs` of fine-tuning at `lr`: the balanced accuracy in between."""
    pruner.step()
    learn.opt = None                           # the pruned tensors are new parameters: a fresh optimizer
    before = evaluate(learn).metrics["balanced_accuracy"]
    fit(learn, epochs, lr)
    return before


def prune_iteratively(learn, img_size: int, ratio: float, steps: int, epochs: int, lr: float, reps: int = 5,
                      importance: str = "l1") -> pd.DataFrame:
    """The recipe of Li et al.: prune the weakest channels globally, fine-tune `epochs` at `lr`, repeat `steps` times
    until the share `ratio` is gone. One row per step (step 0: the trained network): params, flops, ms_per_batch,
    times_ms, y_true, y_pred and metrics after fine-tuning, `pruned_ba` (balanced accuracy before it) and `model`
    (a CPU copy of the network at that step)."""
    pruner = make_pruner(learn.model, img_size, ratio, steps, importance)
    rows = [pruning_row(learn, img_size, reps, step=0, ratio=0.0, pruned_ba=np.nan,
                        model=copy.deepcopy(learn.model).cpu())]
    for k in range(1, steps + 1):
        before = _prune_and_fine_tune(learn, pruner, epochs, lr)
        rows.append(pruning_row(learn, img_size, reps, step=k, ratio=ratio * k / steps, pruned_ba=before))
        rows[-1]["model"] = copy.deepcopy(learn.model).cpu()
    return pd.DataFrame(rows)


def prune_once(learn, img_size: int, ratio: float, epochs: int, lr: float, reps: int = 5,
               importance: str = "l1") -> dict:
    """One-shot pruning: remove the share `ratio` in one step, then fine-tune `epochs` at `lr` (give it the
    iterative run's total fine-tuning for a fair comparison). A row like `prune_iteratively`'s."""
    before = _prune_and_fine_tune(learn, make_pruner(learn.model, img_size, ratio, 1, importance), epochs, lr)
    return pruning_row(learn, img_size, reps, step=1, ratio=ratio, pruned_ba=before)


def prune_copy(model: nn.Module, img_size: int, ratio: float, importance: str = "l1") -> nn.Module:
    """A pruned copy of `model` (one step, no fine-tuning); `model` itself is left as it was."""
    out = copy.deepcopy(model)
    if check_ratio(ratio) > 0:
        make_pruner(out, img_size, ratio, 1, importance).step()
    return out


def block_removal(learn, epochs: int = 0, lr: float = 1e-3, seed: int = 0) -> pd.DataFrame:
    """Accuracy with each `Block` of `learn.model` removed in turn (`without_block`), without retraining, or after
    `epochs` of retraining at `lr` (the intact network 'none' retrained as long): one row per network, with y_true,
    y_pred, metrics and `drop`, the balanced accuracy lost against 'none'."""
    rows = []
    for name in ["none"] + removable_blocks(learn.model):
        model = copy.deepcopy(learn.model) if name == "none" else without_block(learn.model, name)
        short = learner(learn.dls, model, seed=seed)
        if epochs:
            fit(short, epochs, lr)
        ev = evaluate(short)
        rows.append(dict(removed=name, retrained=bool(epochs), y_true=ev.y_true, y_pred=ev.y_pred, **ev.metrics))
    rows = pd.DataFrame(rows)
    return rows.assign(drop=rows["balanced_accuracy"].iloc[0] - rows["balanced_accuracy"])


def first_reaching(steps: pd.DataFrame, flops_x: float = 2.0) -> pd.Series:
    """The first row of `prune_iteratively`'s table with at least `flops_x` times fewer FLOPs than step 0, else
    the last row (the target the claims judge)."""
    x = steps["flops"].iloc[0] / steps["flops"]
    return steps[x >= flops_x].iloc[0] if (x >= flops_x).any() else steps.iloc[-1]


def removal_gap(plain: pd.DataFrame, resnet: pd.DataFrame, metric: str = "balanced_accuracy", n: int = 2000,
                seed: int = 0):
    """Mean accuracy drop from removing one block of the plain network minus that of the residual one (rows of
    `block_removal`, 'none' first), with a 95 % CI: a bootstrap over the validation images, all models resampled
    together. Positive: the residual network tolerates removal better."""
    preds = {(net, r.removed): r.y_pred for net, rows in (("plain", plain), ("resnet", resnet))
             for r in rows.itertuples()}

    def drop(v, net, rows):
        return np.mean([v[(net, "none")] - v[(net, b)] for b in rows["removed"].iloc[1:]], 0)

    return bootstrap(plain["y_true"].iloc[0], preds, lambda v: drop(v, "plain", plain) - drop(v, "resnet", resnet),
                     metric, n, seed)


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


def _resized(m: nn.Module, shapes: dict, name: str) -> nn.Module:
    """A copy of `m` (Conv2d, BatchNorm2d or Linear, or a subclass such as timm's Conv2dSame or BatchNormAct2d) at
    the widths the saved weights `shapes[name + '...']` have: its parameters and buffers re-made at those shapes
    (values follow from the state dict) and its width attributes set, as torch-pruning narrows layers in place."""
    out = copy.deepcopy(m)
    for attr, tensors in (("_parameters", out._parameters), ("_buffers", out._buffers)):
        for k, t in tensors.items():
            key = f"{name}.{k}"
            if t is not None and key in shapes and tuple(t.shape) != shapes[key]:
                new = torch.empty(shapes[key], dtype=t.dtype)
                tensors[k] = nn.Parameter(new, t.requires_grad) if attr == "_parameters" else new
    w = shapes[f"{name}.weight"]
    if isinstance(out, nn.Conv2d):
        if m.groups > 1 and m.groups != m.in_channels:
            raise ValueError(f"{name}: grouped convolutions other than depthwise are not supported")
        out.out_channels = w[0]
        out.groups = w[0] if m.groups > 1 else 1                       # a depthwise conv stays depthwise
        out.in_channels = w[1] * out.groups
    elif isinstance(out, nn.BatchNorm2d):
        out.num_features = w[0]
    else:
        out.out_features, out.in_features = w
    return out


def narrow_to(model: nn.Module, sd: dict) -> nn.Module:
    """Load the state dict `sd` of a (possibly pruned) network into `model`, an unpruned network of the same
    architecture whose Conv2d, BatchNorm2d and Linear layers are first narrowed to the widths `sd` holds."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    for name, m in list(model.named_modules()):
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) and f"{name}.weight" in shapes \
                and tuple(m.weight.shape) != shapes[f"{name}.weight"]:
            _set_module(model, name, _resized(m, shapes, name))
    model.load_state_dict(sd)
    return model.eval()


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

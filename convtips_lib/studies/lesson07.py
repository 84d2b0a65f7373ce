"""Lesson 07's studies: a small residual and a plain network trained from scratch (each at the learning rate its
tune cells chose), one network pruned by each filter ranking to the same ratio, and whole blocks removed from each
(Veit et al. 2016), with the gap between them."""
from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
from fastai.layers import ConvLayer
from torch import nn

from ..core.compat import renamed_kwargs
from ..core.env import seed_everything
from ..core.measure import bootstrap, evaluate
from ..core.models import replace_module
from ..core.train import NoTuneCells, Run, best_on_tune, fit, learner, tune_loader
from ..topics.prune import IMPORTANCES, prune_once, ranked_channels

__all__ = ["Block", "prunable_net", "block_removal", "train_from_scratch", "fresh_learner", "prune_by_each_ranking",
           "first_reaching", "removal_gap"]


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


@renamed_kwargs(depth="blocks")
def prunable_net(n_out: int, residual: bool = True, widths=(32, 64, 128, 256), blocks: int = 2) -> nn.Sequential:
    """A small ConvNet from a random init: a stride-2 stem, then per width a stride-2 conv and `blocks` `Block`s, then
    pooling and a linear head. `residual=False` is the same network without shortcuts (the same parameters)."""
    layers, c = [ConvLayer(3, widths[0], stride=2)], widths[0]
    for w in widths:
        layers += [ConvLayer(c, w, stride=2)] + [Block(w, residual) for _ in range(blocks)]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_out))


@renamed_kwargs(depth="blocks")
def train_from_scratch(dls, residual: bool, widths, blocks: int, epochs: int, lrs=(3e-3,), seed: int = 0) -> Run:
    """A `prunable_net` trained from a random init with one-cycle (Adam) at each peak learning rate of `lrs`, the
    same initial weights at each; the run with the best tune balanced accuracy is kept (`best_on_tune`: the tune
    cells of `dls`, built with tune=True; the test cells never enter the choice, a diverged run never wins). Its
    `Run`, with the chosen `settings['lr']` and `extra['lr_sweep']` ({lr: tune balanced accuracy}, what the choice
    read; empty for one rate on DataLoaders without tune cells: nothing was chosen)."""
    lrs, t = [float(lr) for lr in ([lrs] if isinstance(lrs, (int, float)) else lrs)], time.perf_counter()
    if len(lrs) > 1 and tune_loader(dls) is None:
        raise NoTuneCells(f"choosing among the learning rates {lrs} needs tune cells: build the DataLoaders with "
                          "elpv_dls(..., tune=True), so the choice never reads the test cells")
    runs = {lr: _train_once(dls, residual, widths, blocks, epochs, lr, seed) for lr in lrs}
    best = float(best_on_tune(pd.DataFrame([r.row() for r in runs.values()]))["lr"].iloc[0]) if len(lrs) > 1 else lrs[0]
    run = runs[best]
    run.seconds = time.perf_counter() - t
    run.extra["lr_sweep"] = {lr: r.tune_metrics()["balanced_accuracy"] for lr, r in runs.items() if r.has_tune}
    return run


def _train_once(dls, residual: bool, widths, blocks: int, epochs: int, lr: float, seed: int) -> Run:
    """One `prunable_net` from the seed's initial weights, trained `epochs` at peak `lr`: its `Run` (extra finite)."""
    t = time.perf_counter()
    seed_everything(seed)                       # the same initial weights at every learning rate
    learn = learner(dls, prunable_net(dls.c, residual, widths, blocks), seed=seed)
    hist = fit(learn, epochs, lr)
    finite = bool(np.isfinite(hist[["train_loss", "valid_loss"]].to_numpy(float)).all())
    return Run.of(learn, dict(residual=residual, widths=tuple(widths), blocks=blocks, epochs=epochs, lr=lr, seed=seed),
                  time.perf_counter() - t, finite=finite)


def fresh_learner(learn, seed: int = 0):
    """A new Learner on `learn`'s data with a deep copy of its model (to prune while keeping the original)."""
    return learner(learn.dls, copy.deepcopy(learn.model), seed=seed)


def prune_by_each_ranking(learn, img_size: int, ratio: float, epochs: int, lr: float,
                          rankings=("random", "l1", "l2", "mean_activation", "apoz"), reps: int = 5,
                          seed: int = 0) -> pd.DataFrame:
    """A fresh copy of `learn`'s network (`fresh_learner`, the same `seed`) pruned by the share `ratio` of its channels
    in one shot with each of `rankings` (names of `IMPORTANCES`; 'random' is the control), then fine-tuned `epochs` at
    `lr` (`prune_once`): only the ranking differs. One row per ranking: channels (`ranked_channels` left), widths
    (output channels per conv layer), params, flops (per image), ms_per_batch, pruned_ba (balanced accuracy right
    after the cut), then y_true, y_pred and metrics after fine-tuning (the validation cells)."""
    unknown = [r for r in rankings if not isinstance(r, str) or r not in IMPORTANCES]
    if unknown or not rankings:   # checked before the first copy trains, not after it
        raise ValueError(f"rankings must name one or more of {', '.join(IMPORTANCES)}; got {list(rankings)!r}"
                         + (f" (unknown: {', '.join(map(repr, unknown))})" if unknown else ""))
    rows = []
    for ranking in rankings:
        pruned = fresh_learner(learn, seed)
        row = prune_once(pruned, img_size, ratio, epochs, lr, reps, importance=ranking)
        widths = tuple(m.out_channels for m in pruned.model.modules() if isinstance(m, nn.Conv2d))
        rows.append(dict(ranking=ranking, channels=ranked_channels(pruned.model, img_size), widths=widths, **row))
    return pd.DataFrame(rows)


def removable_blocks(model: nn.Module) -> list:
    """Names of the `Block`s of `model`: each keeps its input's shape, so it can be removed (replaced by identity)."""
    return [name for name, m in model.named_modules() if isinstance(m, Block)]


def without_block(model: nn.Module, name: str) -> nn.Module:
    """A copy of `model` with `Block` `name` replaced by the identity: x + f(x) -> x with the shortcut, f(x) -> x
    without (Veit et al., NeurIPS 2016)."""
    if name not in removable_blocks(model):
        raise ValueError(f"{name!r} is not a removable block: choose one of {', '.join(removable_blocks(model))}")
    out = copy.deepcopy(model)
    replace_module(out, name, nn.Identity())
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

"""Model surgery: parameter groups, how much of the body is frozen (`depth`), and splitting a body into stages.

One word for one thing: `depth` says how much of the body is frozen, counted from the input, everywhere
(`freeze`, `split_at`, `cached_features`, `quick_transfer`, `fit_gradual`):
'head' (the whole body frozen, only the head trains), 'middle' (half), 'none', a fraction in [0, 1],
or a number of body groups 0..n (`n_groups(model)`).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DEPTHS", "n_groups", "freeze", "unfreeze"]

DEPTHS = {"head": 1.0, "middle": 0.5, "none": 0.0}   # named freeze depths: the share of the body frozen


def param_groups(model: nn.Module) -> list:
    """Parameter groups from input to output: the body's stages (timm's coarse groups, else its children), then the head."""
    body = model.body
    if hasattr(body, "group_matcher"):
        from timm.models import group_parameters
        named = dict(body.named_parameters())
        groups = [[named[n] for n in names] for names in
                  group_parameters(body, body.group_matcher(coarse=True)).values()]
    else:
        groups = [list(c.parameters()) for c in body.children()]
    return [g for g in groups if g] + [list(model.head.parameters())]


def n_groups(model: nn.Module) -> int:
    """Number of parameter groups in the body (the largest integer `depth`)."""
    return len(param_groups(model)) - 1


def n_frozen(n_body: int, depth) -> int:
    """How many of `n_body` body groups `depth` freezes ('head', 'middle', 'none', a fraction, or a count)."""
    if isinstance(depth, str):
        depth = DEPTHS.get(depth, depth)
    if isinstance(depth, float) and 0 <= depth <= 1:
        return int(round(depth * n_body))
    if isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth <= n_body:
        return depth
    raise ValueError(f"depth (how much of the body is frozen) must be 'head', 'middle', 'none', a fraction in "
                     f"[0, 1] or a number of body groups 0..{n_body}, got {depth!r}")


def freeze(obj, depth="head") -> int:
    """Freeze the body to `depth` on a `Classifier` or a fastai Learner (via `freeze_to`); returns the frozen groups."""
    model = getattr(obj, "model", obj)
    groups = param_groups(model)
    n = n_frozen(len(groups) - 1, depth)
    if hasattr(obj, "freeze_to"):
        obj.freeze_to(n)
    else:
        for i, g in enumerate(groups):
            for p in g:
                p.requires_grad_(i >= n)
    return n


def unfreeze(obj) -> None:
    """Make every parameter trainable."""
    freeze(obj, "none")


def _is_timm_efficientnet(body) -> bool:
    return all(hasattr(body, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"))


def body_stages(model: nn.Module) -> list:
    """The body as stages applied in order (images -> (B, nf)), one per body parameter group of `param_groups`.

    timm's coarse groups put conv_head + bn2 in the last block's group, so the last stage is
    blocks[-1] + conv_head + bn2 + global pool: freezing n groups == freezing the first n stages.
    """
    body = getattr(model, "body", None)
    if body is None or not _is_timm_efficientnet(body):
        got = type(model if body is None else body).__name__
        raise TypeError(f"body_stages supports a Classifier whose body is a timm EfficientNet (efficientnet_lite*, "
                        f"tf_efficientnet_*), got {got}. For pooled features of any architecture, use depth='head'.")
    blocks = list(body.blocks)
    last = [blocks[-1], body.conv_head, body.bn2, body.global_pool]
    if getattr(body, "drop_rate", 0.0) > 0:
        last.append(nn.Dropout(body.drop_rate))
    return [nn.Sequential(body.conv_stem, body.bn1), *blocks[:-1], nn.Sequential(*last)]


def split_at(model: nn.Module, depth="head") -> tuple:
    """(frozen, rest) with rest(frozen(x)) == model(x); `frozen` = the body up to `depth` ('head': the whole body).

    Both share the model's modules: training `rest` trains the model's later layers.
    """
    if depth == "head" and not _is_timm_efficientnet(getattr(model, "body", None)):
        return nn.Sequential(model.body), nn.Sequential(model.head)   # pooled features of any architecture
    stages = body_stages(model)
    n = n_frozen(len(stages), depth)
    return nn.Sequential(*stages[:n]), nn.Sequential(*stages[n:], model.head)


class Frozen(nn.Module):
    """Wraps a module that never trains: always in eval mode (BN running stats), run without gradients.
    The wrapped module's own `requires_grad` flags are left as they are."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.eval()

    def train(self, mode: bool = True):
        self.training = mode
        self.module.eval()
        return self

    def forward(self, x):
        with torch.no_grad():
            return self.module(x)

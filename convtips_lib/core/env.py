"""The environment a lesson runs in: Colab or not, device, versions, seeds, quiet mode."""
from __future__ import annotations

import os
import platform
import random
import sys
from importlib import metadata

import numpy as np
import torch

__all__ = ["in_colab", "device", "gpu_hint", "versions", "seed_everything", "is_quiet", "environment"]

_PACKAGES = ("torch", "torchvision", "fastai", "timm", "scikit-learn", "scikit-image", "ipywidgets", "elpv-dataset")


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def device() -> torch.device:
    """The device lessons train on: CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_hint(cfg=None) -> str | None:
    """Show a short note (and return it) when no GPU is present, naming how to get one; None on a GPU.

    In a notebook the note is formatted Markdown; elsewhere it is printed.
    """
    if torch.cuda.is_available():
        return None
    name = getattr(cfg, "name", "cpu")
    msg = (f"No GPU found: this lesson runs the '{name}' profile on the CPU (smaller images, fewer epochs). "
           "For the full-size 'gpu' profile, use a GPU runtime (Colab: Runtime > Change runtime type > GPU).")
    _note(msg)
    return msg


def _note(msg: str) -> None:
    """`msg` as a Markdown note in a notebook, else a printed line."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
        if get_ipython() is not None:
            display(Markdown(f"> ℹ️ **Note:** {msg}"))
            return
    except ImportError:
        pass
    print(f"note: {msg}")


def versions() -> dict:
    """Python, platform and the versions of the packages the course depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a profile and seed give the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def is_quiet() -> bool:
    """True in CI or headless runs (`CI` or `CONVTIPS_QUIET` set): no progress bars."""
    return any(os.environ.get(k, "").lower() not in ("", "0", "false") for k in ("CI", "CONVTIPS_QUIET"))


def environment(cfg=None) -> dict:
    """Profile, device, threads and versions in one dict (lesson 00's environment check)."""
    dev = device()
    return {"profile": getattr(cfg, "name", None), "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "cpu_threads": torch.get_num_threads(), "colab": in_colab(), **versions()}

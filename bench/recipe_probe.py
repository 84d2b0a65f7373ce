"""Benchmark (not a test) for lesson 08's cpu target (>= 88 % binary accuracy on ELPV within 15 min): fastai's
fine_tune of EfficientNet-Lite0 on the whole training split with flips, validation accuracy and seconds per epoch.

    python bench/recipe_probe.py --img-size 160 --epochs 10   # -> bench/results/recipe_probe_160px_10ep_<cores>cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("CONVTIPS_QUIET", "1")

import convtips_lib as ctl  # noqa: E402
from bench import machine  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402


def probe(img_size: int, epochs: int, lr: float, arch: str) -> dict:
    """One fine_tune run (1 head epoch + `epochs` whole-network epochs): metrics per epoch and wall time."""
    t0 = time.perf_counter()
    cfg = ctl.profile("cpu")
    dls = ctl.elpv_dls(cfg, frac=1.0, img_size=img_size, bs=32, tfms=ctl.policy_tfms("flips", img_size))
    learn = ctl.make_learner(dls, arch, weights="imagenet", depth="head", seed=cfg.seed)
    hist = ctl.fit(learn, epochs, lr, fine_tune=True, freeze_epochs=1)
    return dict(arch=arch, img_size=img_size, epochs=epochs, lr=lr, seed=cfg.seed, seconds=time.perf_counter() - t0,
                final=ctl.evaluate(learn).metrics,
                per_epoch=hist[["epoch", "phase", "accuracy", "balanced_accuracy", "seconds"]].to_dict("records"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--arch", default="efficientnet_lite0")
    a = ap.parse_args()
    out = dict(machine=machine(), date=time.strftime("%Y-%m-%d"), **probe(a.img_size, a.epochs, a.lr, a.arch))
    path = HERE / "results" / f"recipe_probe_{a.img_size}px_{a.epochs}ep_{os.cpu_count()}cpu.json"
    atomic_write(path, json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("img_size", "epochs", "seconds", "final")}, indent=1), "\n->", path)


if __name__ == "__main__":
    main()

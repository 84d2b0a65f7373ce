"""Benchmark (not a test) for lesson 08's epoch budget and cpu target (>= 88 % binary accuracy on ELPV within 15 min):
the course's recipe (EfficientNet-Lite0, fastai's fine_tune, flips) trained on the 1,574 train cells for a long
budget, its score on the 394 tune cells after every epoch, the epoch they choose (`best_epoch`) and seconds per
epoch. The test cells are never printed, saved or read for the choice: the tune cells choose `cfg.cap.epochs`.

    python bench/recipe_probe.py --img-size 160 --epochs 10
    # -> bench/results/recipe_probe_tune_160px_10ep_<cores>cpu.json
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

TUNE_COLUMNS = ["epoch", "phase", "tune_accuracy", "tune_balanced_accuracy", "seconds"]   # never a test column


def probe(img_size: int, epochs: int, lr: float, arch: str, profile: str = "cpu") -> dict:
    """One run of the recipe (1 head epoch + `epochs` whole-network epochs) on the train cells: the tune cells'
    scores per epoch, the epoch they choose (1-based, head epoch included) and the whole-network epochs that makes
    (the value for `CapCfg.epochs`), and wall time."""
    cfg = ctl.profile(profile)
    recipe = ctl.Recipe(arch=arch, img_size=img_size, epochs=epochs, lr=lr, tta=False, seed=cfg.seed)
    run = ctl.train_on_elpv(recipe, cfg, 1.0)
    chosen = ctl.best_epoch(run, "balanced_accuracy")
    return dict(arch=arch, img_size=img_size, epochs=epochs, lr=lr, seed=cfg.seed, seconds=run.seconds,
                train_cells=len(run.learn.dls.train_ds), tune_cells=len(run.tune_y), chosen_epoch=chosen,
                chosen_whole_network_epochs=max(1, chosen - recipe.freeze_epochs),
                per_epoch=run.history[TUNE_COLUMNS].to_dict("records"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--profile", default="cpu", help="the profile whose workers and seed the run uses")
    a = ap.parse_args()
    out = dict(machine=machine(), date=time.strftime("%Y-%m-%d"),
               **probe(a.img_size, a.epochs, a.lr, a.arch, a.profile))
    path = HERE / "results" / f"recipe_probe_tune_{a.img_size}px_{a.epochs}ep_{os.cpu_count()}cpu.json"
    atomic_write(path, json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("img_size", "epochs", "seconds", "chosen_epoch",
                                          "chosen_whole_network_epochs")}, indent=1), "\n->", path)


if __name__ == "__main__":
    main()

"""Benchmark (not a test): which `convtips train` defaults suit a small folder, judged on its tune images only. On
the digits folder `bench/train_folders.py` writes (338 training images), the recipe at a short budget with each
candidate change; printed and saved: the tune images' best balanced accuracy and the epoch, never a validation
column (the held-out images judge the final defaults in `train_folders.py`, they choose nothing).

    OMP_NUM_THREADS=1 python bench/train_folders_tune.py --steps 160
    # -> bench/results/train_folders_tune_cpu1.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("CONVTIPS_QUIET", "1")

from bench import machine  # noqa: E402
from convtips_lib.core.profiles import profile  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402
from convtips_lib.topics.recipe import Recipe, fit_recipe, recipe_folder_dls  # noqa: E402

CANDIDATES = {   # name: settings changed from convtips train's folder recipe (lr fixed: the rate is not in question)
    "64 px, no augmentation": dict(img_size=64, policy="none"),
    "64 px, rotation": dict(img_size=64, policy="rotation"),
    "96 px, no augmentation": dict(img_size=96, policy="none"),
}


def tune_only(data: Path, steps: int, settings: dict) -> dict:
    """The recipe with `settings` at `steps` on `data`: the tune images' per-epoch balanced accuracy, its best and
    that epoch, and seconds. No validation column is read."""
    recipe = Recipe(steps=steps, **settings)
    t0 = time.perf_counter()
    learn = fit_recipe(recipe_folder_dls(data, recipe, profile("cpu")), recipe)
    tune = [r["tune_balanced_accuracy"] for r in learn.history.rows]
    return dict(settings=settings, steps=steps, best_tune_balanced_accuracy=max(tune), kept_epoch=learn.kept_epoch,
                tune_per_epoch=tune, seconds=time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/tmp/convtips-train-folders/digits/data")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    args = ap.parse_args()
    out = HERE / "results" / "train_folders_tune_cpu1.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    for name, settings in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        res[name] = tune_only(Path(args.data), args.steps, settings)
        print(name, f"tune {res[name]['best_tune_balanced_accuracy']:.3f} at epoch {res[name]['kept_epoch']}",
              f"{res[name]['seconds']:.0f} s", flush=True)
        res["machine"] = dict(machine(), note="2-core machine, 1 thread, another job on the other core")
        atomic_write(out, json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

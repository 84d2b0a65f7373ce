"""Benchmark (not a test): `convtips train` with every setting default, as a new user would run it, on two real
folders written here: (1) handwritten digits, scikit-learn's `load_digits()` 8 x 8 images upscaled to 64 px PNGs in
10 class folders, a stratified 338 to train on and 150 held out (train/ and valid/, as in the issue); (2) faces and
non-faces, scikit-image's `lfw_subset()` (100 + 100, 25 x 25), 40 held out. For each: the network's and the report's
baseline's held-out accuracy with intervals, their paired difference, what was chosen (steps, epochs, lr,
augmentation, image size) and the time; for the digits also the issue's reference, scikit-learn's SVC on the raw
8 x 8 pixels of the same split.

    OMP_NUM_THREADS=1 python bench/train_folders.py [--only digits|faces] [--tag cpu1]
    # -> bench/results/train_folders_<tag>.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("CONVTIPS_QUIET", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
from bench import machine  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402


def _split(y: np.ndarray, n_valid: int, n_total: int | None = None, seed: int = 0) -> tuple:
    """(train indices, valid indices): a stratified `n_total` of the items (all when None), `n_valid` held out."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(y))
    if n_total is not None:
        idx, _ = train_test_split(idx, train_size=n_total, stratify=y, random_state=seed)
    return train_test_split(idx, test_size=n_valid, stratify=y[idx], random_state=seed)


def _write(root: Path, images: np.ndarray, names: list, parts: dict, px: int) -> Path:
    """PNGs of gray `images` (N, H, W) in [0, 1], resized to `px`, under root/<part>/<class>/<i>.png."""
    for part, idx in parts.items():
        for i in idx:
            folder = root / part / names[i]
            folder.mkdir(parents=True, exist_ok=True)
            a = (np.clip(images[i], 0, 1) * 255).astype(np.uint8)
            Image.fromarray(a).resize((px, px), Image.BILINEAR).save(folder / f"{i}.png")
    return root


def digits_folder(root: Path) -> tuple:
    """The digits folder (338 train, 150 valid, 64 px) and the issue's reference: SVC on the same split's 8 x 8."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC
    d = load_digits()
    train, valid = _split(d.target, 150, 338 + 150)
    ref = SVC().fit(d.data[train], d.target[train]).score(d.data[valid], d.target[valid])
    _write(root, d.images / 16, [str(t) for t in d.target], dict(train=train, valid=valid), 64)
    return root, dict(reference="scikit-learn SVC() on the raw 8 x 8 pixels of the same split", accuracy=float(ref),
                      train_images=len(train), valid_images=len(valid))


def faces_folder(root: Path) -> tuple:
    """The faces / non-faces folder (160 train, 40 valid, 25 x 25 written as 25 px PNGs)."""
    from skimage.data import lfw_subset
    x = lfw_subset()
    y = np.array(["face"] * 100 + ["non-face"] * 100)
    train, valid = _split(y, 40)
    _write(root, x, list(y), dict(train=train, valid=valid), 25)
    return root, dict(train_images=len(train), valid_images=len(valid))


def run_train(data: Path, out: Path) -> dict:
    """`convtips train DATA --out OUT` with every setting default, one thread; its record and wall time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CONVTIPS_QUIET="1")
    cmd = [sys.executable, "-c", "import sys, torch; torch.set_num_threads(1); from convtips_lib.course.cli import "
           "main; sys.exit(main(sys.argv[1:]))", "train", str(data), "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"convtips train failed ({done.returncode}): {done.stderr[-2000:]}")
    m = json.loads((out / "results" / "train.json").read_text())["metrics"]
    c = m["chosen_on_tune"]
    return dict(seconds=seconds, printed=done.stdout.strip().splitlines(), held_out=m["held_out"],
                baseline={k: m["baseline"][k] for k in ("model", "C", "tune_scores")},
                steps=c["steps"], batches_per_epoch=c["batches_per_epoch"], epochs=c["epochs"],
                kept_epoch=c["kept_epoch"], tune_images=c["tune_images"], lr=c["lr"], img_size=c["img_size"],
                augmentation=c["augmentation"]["policy"], mistakes=len(m["confident_mistakes"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("digits", "faces"), default=None)
    ap.add_argument("--work", default="/tmp/convtips-train-folders")
    ap.add_argument("--tag", default="cpu1")
    args = ap.parse_args()
    work, out = Path(args.work), HERE / "results" / f"train_folders_{args.tag}.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    for name, make in (("digits", digits_folder), ("faces", faces_folder)):
        if args.only not in (None, name):
            continue
        import shutil
        shutil.rmtree(work / name, ignore_errors=True)
        data, facts = make(work / name / "data")
        res[name] = dict(facts, **run_train(data, work / name / "run"))
        print(name, json.dumps(res[name]["held_out"]["network"]), f"{res[name]['seconds']:.0f} s", flush=True)
    res["machine"] = dict(machine(), note="2-core machine, run with 1 thread while another job used the other core")
    atomic_write(out, json.dumps(res, indent=1))
    print(out)


if __name__ == "__main__":
    main()

"""Benchmark (not a test): data loading, forward and training speed per architecture, and the smoke course run.

    python bench/bench.py                      # parts only, profile smoke -> bench/results/bench_<profile>_<machine>.json
    python bench/bench.py --course             # also time `convtips run` of every lesson in the smoke profile
    python bench/bench.py --course --course-profile cpu --lessons 01 02   # lessons in the cpu profile
    python bench/bench.py --profile cpu --archs efficientnet_lite0 resnet18
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import convtips_lib as ctl
from convtips_lib.core.store import atomic_write

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    """Where the figures came from."""
    env = ctl.environment()
    return dict(host=platform.node(), cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                threads=torch.get_num_threads(), device=env["device"], gpu=env["gpu"], torch=env["torch"],
                fastai=env["fastai"], timm=env["timm"], python=env["python"])


def _images_per_s(dl, n_batches: int) -> float:
    it, n, t = iter(dl), 0, time.perf_counter()
    for _ in range(min(n_batches, len(dl))):
        n += len(next(it)[0])
    return n / (time.perf_counter() - t)


def loading_speed(cfg, aug: bool, n_batches: int = 8) -> dict:
    """Images/s of the ELPV training DataLoader (decode, resize, batch; fastai's aug_transforms if `aug`).

    `cold`: first pass, every PNG decoded; `warm`: again, decoded images served from the session's memo.
    """
    from fastai.vision.all import aug_transforms
    ctl.OpenResized.forget()
    dls = ctl.elpv_dls(cfg, tfms=aug_transforms(size=cfg.img_size) if aug else None, seed=0)
    cold = _images_per_s(dls.train.new(shuffle=False), n_batches)
    return dict(augment=aug, cold_images_per_s=cold, warm_images_per_s=_images_per_s(dls.train.new(shuffle=False),
                                                                                      n_batches))


def train_speed(arch: str, cfg, steps: int = 3) -> dict:
    """Training steps/s and images/s (forward + backward + AdamW step) on random (bs, 3, size, size) batches."""
    model = ctl.pretrained(arch, 2, weights=None).to(ctl.device()).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(cfg.bs, 3, cfg.img_size, cfg.img_size, device=ctl.device())
    y = torch.randint(0, 2, (cfg.bs,), device=ctl.device())
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if ctl.device().type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step = sorted(times[1:])[len(times[1:]) // 2]
    return dict(train_steps_per_s=1 / step, train_images_per_s=cfg.bs / step)


def arch_speed(arch: str, cfg) -> dict:
    """Parameters, FLOPs, inference latency and training speed of `arch` at the profile's image size."""
    model = ctl.pretrained(arch, 2, weights=None).to(ctl.device())
    lat = ctl.latency(model, cfg.img_size, bs=cfg.bs, reps=cfg.latency_reps)
    return dict(arch=arch, img_size=cfg.img_size, bs=cfg.bs, params=ctl.count_params(model),
                gflops_per_image=ctl.count_flops(model, cfg.img_size) / 1e9,
                infer_images_per_s=lat["images_per_s"], **train_speed(arch, cfg))


def course_run(profile: str, lessons: list) -> dict:
    """Wall seconds and status of each lesson of `convtips run` (read from its run.json) and each lesson's claims."""
    from convtips_lib.core.results import read_records
    out_dir = HERE.parent / "runs" / f"bench_{profile}"
    cmd = [sys.executable, "-m", "convtips_lib.course.cli", "run", *lessons, "--profile", profile, "--out", str(out_dir)]
    run_json = out_dir / "run.json"
    run_json.unlink(missing_ok=True)
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if not run_json.exists():
        raise RuntimeError(f"`convtips run` wrote no {run_json} (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    run = json.loads(run_json.read_text())
    per = {r["lesson"]: r["seconds"] for r in run if r["status"] == "ok"}
    claims = {r["lesson"]: r["claims"] for r in read_records(out_dir / "results")[0] if r["lesson"] in per}
    return dict(profile=profile, returncode=out.returncode, total_s=time.perf_counter() - t, per_lesson_s=per,
                status={r["lesson"]: r["status"] for r in run}, claims=claims,
                problems={r["lesson"]: r["error"] for r in run if r["status"] != "ok"})


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--archs", nargs="*", default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                                   "resnet18", "resnet50", "mobilenetv3_large_100"])
    ap.add_argument("--course", action="store_true", help="also time `convtips run` of the lessons")
    ap.add_argument("--course-profile", default="smoke", help="profile of the course run (default smoke)")
    ap.add_argument("--lessons", nargs="*", default=[])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = ctl.profile(args.profile)
    rec = dict(machine=machine(), profile=cfg.as_dict(), date=time.strftime("%Y-%m-%d"),
               loading=[loading_speed(cfg, aug) for aug in (False, True)],
               archs=[arch_speed(a, cfg) for a in args.archs])
    if args.course:
        rec["course"] = course_run(args.course_profile, args.lessons)
    tag = "gpu" if rec["machine"]["gpu"] else f"cpu{os.cpu_count()}"
    course = f"_course-{args.course_profile}" if args.course else ""
    out = Path(args.out or HERE / "results" / f"bench_{cfg.name}{course}_{tag}.json")
    atomic_write(out, json.dumps(rec, indent=1))
    print(json.dumps(rec, indent=1))
    return out


if __name__ == "__main__":
    main()

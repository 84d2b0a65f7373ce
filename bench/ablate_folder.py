"""Benchmark (not a test): `convtips ablate` with every setting default, as a user would run it, on a real folder
of about 500 images at 64 px: `bench/train_folders.py`'s handwritten digits (338 to train, 150 held out, 10 class
folders). The issue's budget: done within 15 minutes on this 2-core machine. Records the wall time against the
estimate the command printed, what the budget settled on, each tip's effect with its interval and verdict, the
configurations, and the recipe the tune images chose.

    python bench/ablate_folder.py [--tag cpu2]     # -> bench/results/ablate_folder_<tag>.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import machine  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402
from train_folders import digits_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default=f"cpu{os.cpu_count()}")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = digits_folder(Path(tmp) / "digits")[0]
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "convtips_lib.course.cli", "ablate", str(data), "--out", str(out)],
                              capture_output=True, text=True, env=dict(os.environ, CONVTIPS_QUIET="1"))
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"convtips ablate failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        rec = json.loads((out / "results" / "ablate.json").read_text())
        chosen = json.loads((out / "recipe.json").read_text())
    ab = rec["metrics"]["ablate"]
    result = dict(machine=machine(), date=time.strftime("%Y-%m-%d"), folder="digits: 338 train, 150 held out, 64 px",
                  profile=rec["profile"]["name"], seconds=seconds, budget=ab["budget"], tips=ab["tips"],
                  skipped_tips=ab["skipped_tips"], configs=ab["configs"], choices=ab["choices"], chosen_recipe=chosen,
                  claims=[{k: c[k] for k in ("claim", "effect", "ci", "verdict", "half_width")} for c in rec["claims"]],
                  stdout=done.stdout.splitlines()[:3])
    path = HERE / "results" / f"ablate_folder_{a.tag}.json"
    atomic_write(path, json.dumps(result, indent=1, default=float))
    print(f"{seconds:.0f} s (estimate {ab['budget']['estimate_s']:.0f} s): {ab['budget']['why']}")
    for c in result["claims"]:
        print(f"  {c['claim']}: {c['effect']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] {c['verdict']}")
    print("->", path)


if __name__ == "__main__":
    main()

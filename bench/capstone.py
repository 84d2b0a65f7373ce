"""Benchmark (not a test): lesson 08's figures on this machine — the full recipe's accuracy and time against the
profile's target, what the tune cells chose (the recipe's settings, tta, the epoch kept), and every claim of the
lesson — from the record a run of the lesson wrote.

    convtips run 08 --profile cpu --out runs/capstone-cpu          # under half an hour on 2 cores
    python bench/capstone.py runs/capstone-cpu                     # -> bench/results/capstone_<profile>_cpu<cores>.json
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

from bench import machine  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402

KEEP_TABLES = ("configs", "ablation", "choices", "paper", "accuracy_by_group", "inference_costs", "mistakes")


def _lesson_seconds(run: Path) -> float | None:
    """The lesson's wall time from run.json (`convtips run`), if the run folder has one."""
    try:
        lessons = json.loads((run / "run.json").read_text())    # one row per lesson
        return next(float(r["seconds"]) for r in lessons if r["lesson"].startswith("08"))
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


def summary(run: Path) -> dict:
    """The capstone record of `run` (a `convtips run` folder, or a results folder holding 08_capstone.json)."""
    path = next(p for p in (run / "results" / "08_capstone.json", run / "08_capstone.json") if p.is_file())
    rec = json.loads(path.read_text())
    m = rec["metrics"]
    return dict(profile=rec["profile"]["name"], seed=rec["seed"], lesson_seconds=_lesson_seconds(run),
                course_recipe=m.get("course_recipe"), recipe=m["recipe"], kept_epoch=m.get("kept_epoch"),
                recipe_accuracy=m["recipe_accuracy"], recipe_seconds=m["recipe_seconds"],
                target_met=m["target_met"], four_class_accuracy=m["four_class_accuracy"],
                claims=[{k: c[k] for k in ("claim", "effect", "ci", "verdict", "unit")} for c in rec["claims"]],
                tables={k: v for k, v in rec["tables"].items() if k in KEEP_TABLES})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the --out folder of 'convtips run 08' (or a results folder)")
    a = ap.parse_args()
    out = dict(machine=machine(), date=time.strftime("%Y-%m-%d"), **summary(a.run))
    path = HERE / "results" / f"capstone_{out['profile']}_cpu{os.cpu_count()}.json"
    atomic_write(path, json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("recipe_accuracy", "recipe_seconds", "target_met", "lesson_seconds")}),
          "\n->", path)


if __name__ == "__main__":
    main()

"""Benchmark (not a test): what `convtips run` measured, lesson by lesson — wall seconds against the budget and every
claim (effect, interval, verdict, half-width) — gathered from one or more run folders into one JSON to commit.

    convtips run 04 --profile cpu --out runs/cpu04
    python bench/lessons.py runs/cpu04 --tag protocol   # -> bench/results/lessons_cpu_<tag>_cpu<cores>.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import machine  # noqa: E402
from convtips_lib.core.results import read_records  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402

BUDGET_S = {"smoke": 75, "cpu": 12 * 60}    # per lesson (the lesson standard); the capstone's own below
CAPSTONE_BUDGET_S = {"smoke": 75, "cpu": 30 * 60}


def gather(folders) -> dict:
    """{lesson: dict(seconds, status, over_budget, claims)} from the run folders, later folders winning."""
    out = {}
    for folder in map(Path, folders):
        runs = json.loads((folder / "run.json").read_text())
        records = {r["lesson"]: r for r in read_records(folder / "results")[0]}
        for r in runs:
            rec = records.get(r["lesson"], {})
            profile = rec.get("profile", {}).get("name")
            budget = (CAPSTONE_BUDGET_S if r["lesson"].startswith("08") else BUDGET_S).get(profile)
            out[r["lesson"]] = dict(seconds=r["seconds"], status=r["status"], profile=profile, budget_s=budget,
                                    over_budget=budget is not None and r["seconds"] > budget,
                                    claims=rec.get("claims", []))
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="folders written by `convtips run --out`")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lessons = gather(args.runs)
    profiles = {v["profile"] for v in lessons.values()} - {None}
    profile = profiles.pop() if len(profiles) == 1 else "mixed"
    rec = dict(machine=machine(), date=time.strftime("%Y-%m-%d"), profile=profile, note=args.note,
               how="convtips run --profile <profile> <lessons> (wall time per lesson, nothing else running)",
               total_s=round(sum(v["seconds"] for v in lessons.values()), 1), lessons=lessons)
    out = Path(args.out or HERE / "results" / f"lessons_{profile}_{args.tag}_cpu{rec['machine']['cores']}.json")
    atomic_write(out, json.dumps(rec, indent=1))
    for name, v in lessons.items():
        print(f"{name}: {v['seconds']:.0f} s{' (over budget)' if v['over_budget'] else ''}, {len(v['claims'])} claims")
    print(f"-> {out}")
    return out


if __name__ == "__main__":
    main()

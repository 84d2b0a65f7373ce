"""Benchmark (not a test): do two runs of the same profile and seed give the same claims? For a refactoring, which
must leave every effect, interval and verdict as it was.

    convtips run --profile smoke --out runs/before     # on the old commit
    convtips run --profile smoke --out runs/after      # on the new one
    python bench/same_claims.py runs/before runs/after --note "structure issue"
    # -> bench/results/same_claims_<profile>_cpu<cores>.json

Claims measured by the clock (latency, seconds, speed-ups) differ between any two runs; they are listed apart, with
their verdicts, and count as the same when their verdicts agree.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import convtips_lib as ctl  # noqa: E402
from bench import machine  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402

TIMED = re.compile(r"faster|latency|seconds|speed|time|ms\b|throughput|wait", re.I)   # claims read off a clock


def _same(a: float, b: float, tol: float) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and
                                         (math.isclose(a, b, abs_tol=tol) or (math.isnan(a) and math.isnan(b))))


def compare(a: Path, b: Path, tol: float = 1e-9) -> dict:
    """Per claim both runs hold: effects, intervals and verdicts, and whether they are the same."""
    la, lb = (ctl.ledger(ctl.load_results(Path(f) / "results")) for f in (a, b))
    both = la.merge(lb, on=["lesson", "claim"], suffixes=("_a", "_b"), how="outer", indicator=True)
    rows = []
    for r in both.itertuples():
        timed = bool(TIMED.search(f"{r.claim} {r.unit_a if isinstance(r.unit_a, str) else r.unit_b}"))
        numbers = all(_same(getattr(r, f"{k}_a"), getattr(r, f"{k}_b"), tol) for k in ("effect", "ci_low", "ci_high"))
        in_both = r._asdict()["_merge"] == "both"
        same = in_both and r.verdict_a == r.verdict_b and (numbers or timed)
        rows.append(dict(lesson=r.lesson, claim=r.claim, timed=timed, same=bool(same), in_both=in_both,
                         verdict_a=r.verdict_a, verdict_b=r.verdict_b, effect_a=r.effect_a, effect_b=r.effect_b,
                         ci_a=[r.ci_low_a, r.ci_high_a], ci_b=[r.ci_low_b, r.ci_high_b]))
    return dict(claims=len(rows), same=sum(r["same"] for r in rows), timed=sum(r["timed"] for r in rows),
                differ=[f"{r['lesson']}: {r['claim']}" for r in rows if not r["same"]], rows=rows)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="what changed between the runs, and the machine's load")
    args = ap.parse_args(argv)
    recs = ctl.load_results(Path(args.run_a) / "results")
    profile = recs[0]["profile"]["name"] if recs else "unknown"
    rec = dict(machine=machine(), date=time.strftime("%Y-%m-%d"), profile=profile, note=args.note,
               **compare(Path(args.run_a), Path(args.run_b)))
    out = Path(args.out or HERE / "results" / f"same_claims_{profile}_cpu{rec['machine']['cores']}.json")
    atomic_write(out, json.dumps(rec, indent=1, default=str))
    print(f"{rec['same']} of {rec['claims']} claims the same ({rec['timed']} read off a clock: verdicts compared); "
          f"differ: {rec['differ'] or 'none'} -> {out}")
    return out


if __name__ == "__main__":
    main()

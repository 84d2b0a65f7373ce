"""Benchmark (not a test): do two runs reach the same verdicts, and the same numbers?

Two seeds: no claim may be supported with one and refuted with the other (a claim that flips must come out
inconclusive).

    CONVTIPS_SEED=42 convtips run 01 02 --profile cpu --out runs/seed42
    CONVTIPS_SEED=43 convtips run 01 02 --profile cpu --out runs/seed43
    python bench/agreement.py runs/seed42 runs/seed43     # -> bench/results/agreement_<profile>_<machine>.json

The same seed before and after a refactoring: every effect, interval and verdict must be the same (`same`; claims
read off a clock, `timed`, count as the same when their verdicts agree, since no two runs time alike).

    python bench/agreement.py runs/before runs/after --out bench/results/same_claims_smoke_cpu2.json
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


def _ledger(folder: Path):
    return ctl.ledger(ctl.load_results(Path(folder) / "results"))


TIMED = re.compile(r"faster|latency|seconds|speed|time|ms\b|throughput|wait", re.I)   # claims read off a clock


def _close(a, b, tol: float = 1e-9) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and
                                         (math.isclose(a, b, abs_tol=tol) or (math.isnan(a) and math.isnan(b))))


def agreement(a: Path, b: Path) -> dict:
    """Per claim of the lessons both runs hold: both verdicts, effects and intervals, whether it is read off a clock
    (`timed`) and whether it is the same (`same`); counts of agreement, flips and sameness."""
    la, lb = _ledger(a), _ledger(b)
    both = la.merge(lb, on=["lesson", "claim"], suffixes=("_a", "_b"))
    rows = []
    for r in both.itertuples():
        timed = bool(TIMED.search(f"{r.claim} {r.unit_a}"))
        numbers = all(_close(getattr(r, f"{k}_a"), getattr(r, f"{k}_b")) for k in ("effect", "ci_low", "ci_high"))
        rows.append(dict(lesson=r.lesson, claim=r.claim, verdict_a=r.verdict_a, verdict_b=r.verdict_b,
                         effect_a=r.effect_a, effect_b=r.effect_b, ci_a=[r.ci_low_a, r.ci_high_a],
                         ci_b=[r.ci_low_b, r.ci_high_b], timed=timed,
                         same=bool(r.verdict_a == r.verdict_b and (numbers or timed))))
    flips = [r for r in rows if {r["verdict_a"], r["verdict_b"]} == {"supported", "refuted"}]
    return dict(claims=len(rows), only_a=len(la) - len(rows), only_b=len(lb) - len(rows),
                agree=sum(r["verdict_a"] == r["verdict_b"] for r in rows), flips=len(flips),
                same=sum(r["same"] for r in rows), timed=sum(r["timed"] for r in rows),
                differ=[f"{r['lesson']}: {r['claim']}" for r in rows if not r["same"]], rows=rows)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="conditions worth recording, e.g. other jobs loading the machine")
    args = ap.parse_args(argv)
    recs = ctl.load_results(Path(args.run_a) / "results")
    profile = recs[0]["profile"]["name"] if recs else "unknown"
    seeds = [ctl.load_results(Path(f) / "results")[0]["seed"] for f in (args.run_a, args.run_b)]
    rec = dict(machine=machine(), date=time.strftime("%Y-%m-%d"), profile=profile, seeds=seeds, note=args.note,
               **agreement(Path(args.run_a), Path(args.run_b)))
    out = Path(args.out or HERE / "results" / f"agreement_{profile}_cpu{rec['machine']['cores']}.json")
    atomic_write(out, json.dumps(rec, indent=1))
    print(f"{rec['agree']} of {rec['claims']} verdicts agree; {rec['flips']} supported/refuted flips; "
          f"{rec['same']} the same in number ({rec['timed']} read off a clock) -> {out}")
    return out


if __name__ == "__main__":
    main()

"""Benchmark (not a test): how much can a run decide? Per lesson and for the course, the verdicts and the interval
half-widths of the claims that measure a training effect (a score of trained models, `claim_kind`), against the
protocol issue's target: a median half-width of at most 0.015 balanced accuracy.

    convtips run --profile cpu --out runs/cpu
    python bench/power.py runs/cpu            # -> bench/results/power_<profile>_cpu<cores>.json
    python bench/power.py bench/results/lessons_cpu_a_cpu2.json bench/results/lessons_cpu_b_cpu2.json --out ...
                                              # the course from committed `bench/lessons.py` figures, later files win
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import convtips_lib as ctl  # noqa: E402
from bench import machine  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402

TARGET = 0.015   # the median half-width the protocol issue asks of the training-effect claims


def _half(c: dict):
    return c.get("half_width") if c.get("half_width") is not None else ctl.resolution(*(
        float("nan") if v is None else v for v in c["ci"]))


def power(records: list) -> dict:
    """Per lesson: verdict counts, and for its training-effect claims the half-widths and their median; the
    course's median; every inconclusive training-effect claim with what it could detect."""
    lessons, halves, blind, margins = {}, [], [], []
    for rec in records:
        claims = rec["claims"]
        effects = [c for c in claims if c.get("kind", ctl.claim_kind(c)) == "training effect"]
        hw = [h for h in map(_half, effects) if h is not None]
        halves += hw
        blind += [dict(lesson=rec["lesson"], claim=c["claim"], effect=c["effect"], half_width=_half(c))
                  for c in effects if c["verdict"] == "inconclusive"]
        margins += [dict(lesson=rec["lesson"], claim=c["claim"], margin=c["margin"], half_width=_half(c))
                    for c in claims if c.get("margin") is not None and c.get("margin_resolvable") is False]
        lessons[rec["lesson"]] = dict(
            claims=len(claims), verdicts={v: sum(c["verdict"] == v for c in claims) for v in
                                          ("supported", "refuted", "inconclusive", "undecided")},
            training_effects=len(effects), median_half_width=statistics.median(hw) if hw else None)
    median = statistics.median(halves) if halves else None
    return dict(target=TARGET, median_half_width=median, meets_target=median is not None and median <= TARGET,
                training_effects=len(halves), lessons=lessons, inconclusive_training_effects=blind,
                margins_below_resolution=margins)


def _records(sources: list) -> tuple:
    """(records, profile, seed): the lesson records of one `convtips run` folder, or of `bench/lessons.py` JSON
    files (each lesson from the last file that has it)."""
    if len(sources) == 1 and Path(sources[0]).is_dir():
        recs = ctl.load_results(Path(sources[0]) / "results")
        if not recs:
            raise SystemExit(f"no lesson records in {Path(sources[0]) / 'results'}: run `convtips run --out "
                             f"{sources[0]}`")
        return recs, recs[0]["profile"]["name"], recs[0]["seed"]
    lessons, profiles = {}, set()
    for f in sources:
        d = json.loads(Path(f).read_text())
        profiles.add(d["profile"])
        lessons.update({name: dict(lesson=name, claims=v["claims"]) for name, v in d["lessons"].items()})
    if len(profiles) != 1:
        raise SystemExit(f"the figures come from different profiles ({', '.join(sorted(profiles))}): use one")
    return [lessons[k] for k in sorted(lessons)], profiles.pop(), None


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="+", help="a `convtips run` folder, or `bench/lessons.py` JSON files")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    recs, profile, seed = _records(args.run)
    rec = dict(machine=machine(), date=time.strftime("%Y-%m-%d"), profile=profile, seed=seed,
               note=args.note, sources=args.run, **power(recs))
    out = Path(args.out or HERE / "results" / f"power_{profile}_cpu{rec['machine']['cores']}.json")
    atomic_write(out, json.dumps(rec, indent=1))
    med = rec["median_half_width"]
    print(f"{rec['training_effects']} training-effect claims, median half-width "
          f"{'n/a' if med is None else f'{med:.3f}'} (target {TARGET}) -> {out}")
    return out


if __name__ == "__main__":
    main()

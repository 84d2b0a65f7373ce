"""Benchmark (not a test) for lesson 08's time-accuracy frontier (issue: >= 90 % accuracy on the held-out ELPV cells
within 15 minutes on a laptop CPU): candidate recipes, each trained once on the 1,574 train cells (lesson 08's
`train_on_elpv`, the epoch kept chosen on the 394 tune cells), with the seconds of each phase, the tune cells'
scores (what chooses) and the test cells' (what judges). Which candidate becomes the recipe is chosen by a rule
written here before any test figure is read: the best tune accuracy among the candidates whose training and
evaluation fit the budget (`choose`).

    python bench/frontier.py base=img_size:160,epochs:8 big=img_size:224,epochs:6 --tag T
    # -> bench/results/frontier_cpu_<tag>_cpu<cores>.json (candidates already there are kept, not re-run)
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

BUDGET_S = 15 * 60   # training and evaluation of the final model, on 2 cores


def parse_candidate(text: str) -> tuple:
    """'name=key:value,key:value' -> (name, {key: value}) with values read as JSON where they parse."""
    name, _, spec = text.partition("=")
    out = {}
    for part in filter(None, spec.split(",")):
        k, _, v = part.partition(":")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return name, out


def measure(name: str, overrides: dict, cfg) -> dict:
    """One candidate: the course's recipe with `overrides`, trained on the train cells; its tune and test scores
    (through the recipe's tta when it has it) and seconds per phase."""
    recipe = ctl.Recipe(arch=cfg.arch, seed=cfg.seed).with_(**overrides)
    run = ctl.train_on_elpv(recipe, cfg, 1.0)
    t0 = time.perf_counter()
    tune = ctl.recipe_eval(run.learn, recipe, run.learn.dls.tune)
    tune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = ctl.recipe_eval(run.learn, recipe)
    test_s = time.perf_counter() - t0
    right = int((test.y_true == test.y_pred).sum())
    acc = ctl.proportion(right, len(test.y_true), "accuracy")
    return dict(name=name, recipe=recipe.to_dict(), kept_epoch=run.learn.kept_epoch, train_s=run.seconds,
                tune_eval_s=tune_s, test_eval_s=test_s, total_s=run.seconds + tune_s + test_s,
                tune=tune.metrics, tune_cells=len(tune.y_true), test=test.metrics, test_cells=len(test.y_true),
                test_accuracy_ci=[acc.low, acc.high])


def choose(rows: list, budget_s: float = BUDGET_S) -> str | None:
    """The rule: among the candidates whose total seconds fit `budget_s`, the best tune accuracy (ties: the
    faster). Reads no test figure."""
    fit = [r for r in rows if r["total_s"] <= budget_s]
    return max(fit, key=lambda r: (r["tune"]["accuracy"], -r["total_s"]))["name"] if fit else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+", help="name=key:value,... (Recipe settings)")
    ap.add_argument("--tag", default="frontier")
    ap.add_argument("--profile", default="cpu")
    a = ap.parse_args()
    cfg = ctl.profile(a.profile)
    path = HERE / "results" / f"frontier_{a.profile}_{a.tag}_cpu{os.cpu_count()}.json"
    out = json.loads(path.read_text()) if path.exists() else dict(machine=machine(), profile=a.profile, rows=[])
    for text in a.candidates:
        name, overrides = parse_candidate(text)
        if any(r["name"] == name for r in out["rows"]):
            continue
        out["rows"].append(measure(name, overrides, cfg))
        out.update(date=time.strftime("%Y-%m-%d"), budget_s=BUDGET_S, chosen_on_tune=choose(out["rows"]))
        atomic_write(path, json.dumps(out, indent=1, default=float))
        r = out["rows"][-1]
        print(f"{name}: {r['total_s']:.0f} s, tune acc {r['tune']['accuracy']:.4f}, test acc "
              f"{r['test']['accuracy']:.4f}", flush=True)
    print("->", path)


if __name__ == "__main__":
    main()

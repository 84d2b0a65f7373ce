"""Benchmark (not a test) for lesson 08's deployed model (issue: >= 2x fewer FLOPs, >= 1.5x lower CPU latency, at
most 1 point of balanced accuracy lost on the test cells): the course's recipe trained once at full size (the
teacher), then copies of it pruned by the profile's share of channels (global L1, one shot) and fine-tuned in each
candidate way — more epochs, knowledge distillation from the unpruned network (`Distill`, Hinton et al. 2015) —
with the seconds of each, the tune cells' scores (what chooses) and the test cells' (what judges). The way that
becomes the profile's is chosen by a rule written here before any test figure is read (`choose`).

    python bench/prune_recover.py ft2=epochs:2 ft2_kd=epochs:2,distill:true layer_kd=epochs:2,distill:true,global:false
    # -> bench/results/prune_recover_cpu_<tag>_cpu<cores>.json (ways already there are kept, not re-run); the
    # teacher's weights are kept in --teacher-cache, so a second call trains no teacher
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

import torch  # noqa: E402

import convtips_lib as ctl  # noqa: E402
from bench import machine  # noqa: E402
from convtips_lib.core.store import atomic_write  # noqa: E402
from convtips_lib.core.train import make_learner, predict_loader  # noqa: E402
from frontier import parse_candidate  # noqa: E402


def _tune_ba(model, dls) -> tuple:
    probs, y = predict_loader(model, dls.tune)
    return ctl.metric_value(y, probs.argmax(1)), probs.argmax(1), y


def measure(name: str, way: dict, teacher, recipe, cfg) -> dict:
    """One way of pruning and fine-tuning: the profile's share of channels (`ratio`) ranked globally or per layer
    (`global`), in one step or `steps` steps, each followed by `epochs` at the recipe's rate / cfg.prune.ft_div,
    distilled from the unpruned network (`distill`, `Distill`'s defaults) or not; its tune and test balanced
    accuracy against the unpruned network's."""
    pruned = ctl.fresh_learner(teacher, cfg.seed)
    kw = dict(teacher=teacher.model if way.get("distill") else None, global_ranking=way.get("global", True))
    ratio, lr = way.get("ratio", cfg.cap.prune_ratio), recipe.lr / cfg.prune.ft_div
    t0 = time.perf_counter()
    if way.get("steps", 1) > 1:
        row = ctl.prune_iteratively(pruned, recipe.img_size, ratio, way["steps"], way["epochs"], lr,
                                    cfg.latency_reps, **kw).iloc[-1].to_dict()
    else:
        row = ctl.prune_once(pruned, recipe.img_size, ratio, way["epochs"], lr, cfg.latency_reps, **kw)
    seconds = time.perf_counter() - t0
    t_ba, t_pred, t_y = _tune_ba(teacher.model, teacher.dls)
    p_ba, p_pred, _ = _tune_ba(pruned.model, teacher.dls)
    ev = ctl.evaluate(teacher)
    test = ctl.paired_bootstrap(ev.y_true, ev.y_pred, row["y_pred"])
    tune = ctl.paired_bootstrap(t_y, t_pred, p_pred)
    return dict(name=name, way=way, seconds=seconds, params=row["params"], flops=row["flops"],
                ms_per_batch=row["ms_per_batch"], tune_loss=p_ba - t_ba, tune_ci=[tune.low, tune.high],
                tune_ba=p_ba, test_loss=test.effect, test_ci=[test.low, test.high], test_ba=row["balanced_accuracy"],
                test_accuracy=row["accuracy"])


def teacher_learner(recipe, cfg, cache: Path):
    """(learn, seconds): the recipe trained on the train cells, or its weights read back from `cache`
    (weights_only), which a first call writes."""
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["recipe"] == json.dumps(recipe.to_dict(), sort_keys=True):
            learn = make_learner(ctl.recipe_dls(recipe, cfg, cfg.cap.frac), recipe.arch, weights=recipe.weights,
                                 depth="head", seed=recipe.seed)
            learn.model.load_state_dict(saved["state"])
            learn.kept_epoch = int(saved["kept_epoch"])
            return learn, float(saved["train_s"])
    t0 = time.perf_counter()
    learn = ctl.train_on_elpv(recipe, cfg, cfg.cap.frac).learn
    seconds = time.perf_counter() - t0
    torch.save(dict(recipe=json.dumps(recipe.to_dict(), sort_keys=True), state=learn.model.state_dict(),
                    kept_epoch=learn.kept_epoch, train_s=seconds), cache)
    return learn, seconds


FLOPS_X, SPEEDUP_X = 2.0, 1.5   # the deployed model: at least 2x fewer FLOPs, 1.5x lower CPU latency


def choose(rows: list) -> str | None:
    """The rule: among the ways whose pruned network has at least `FLOPS_X` fewer FLOPs and `SPEEDUP_X` lower
    latency, the one that loses least balanced accuracy on the tune cells (ties: the faster fine-tuning). Reads no
    test figure."""
    fit = [r for r in rows if r["flops_ratio"] >= FLOPS_X and r["speedup"] >= SPEEDUP_X]
    return max(fit, key=lambda r: (r["tune_loss"], -r["seconds"]))["name"] if fit else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ways", nargs="+", help="name=key:value,... (epochs, distill, global, steps, ratio)")
    ap.add_argument("--tag", default="recover")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--teacher-cache", type=Path, default=None,
                    help="file for the teacher's weights (default: /tmp/convtips_prune_teacher_<profile>.pth)")
    a = ap.parse_args()
    cfg = ctl.profile(a.profile)
    recipe = ctl.capstone_recipes(cfg)[0]
    teacher, train_s = teacher_learner(recipe, cfg, a.teacher_cache or Path(f"/tmp/convtips_prune_teacher_{a.profile}.pth"))
    ev = ctl.evaluate(teacher)
    base = ctl.model_cost(teacher.model, recipe.img_size, recipe.bs, cfg.latency_reps)
    path = HERE / "results" / f"prune_recover_{a.profile}_{a.tag}_cpu{os.cpu_count()}.json"
    out = json.loads(path.read_text()) if path.exists() else dict(machine=machine(), profile=a.profile, rows=[])
    out.update(date=time.strftime("%Y-%m-%d"), recipe=recipe.to_dict(),
               teacher=dict(train_s=train_s, kept_epoch=teacher.kept_epoch, params=base["params"], flops=base["flops"],
                            ms_per_batch=base["ms_per_batch"], tune_ba=_tune_ba(teacher.model, teacher.dls)[0],
                            test=ev.metrics))
    for text in a.ways:
        name, way = parse_candidate(text)
        if any(r["name"] == name for r in out["rows"]):
            continue
        r = measure(name, way, teacher, recipe, cfg)
        r.update(flops_ratio=base["flops"] / r["flops"], speedup=base["ms_per_batch"] / r["ms_per_batch"])
        out["rows"].append(r)
        out["chosen_on_tune"] = choose(out["rows"])
        atomic_write(path, json.dumps(out, indent=1, default=float))
        print(f"{name}: {r['seconds']:.0f} s, tune loss {r['tune_loss']:+.4f}, test loss {r['test_loss']:+.4f} "
              f"{r['test_ci']}, {r['flops_ratio']:.2f}x fewer FLOPs, {r['speedup']:.2f}x faster", flush=True)
    out["chosen_on_tune"] = choose(out["rows"])
    atomic_write(path, json.dumps(out, indent=1, default=float))
    print("chosen on tune:", out["chosen_on_tune"], "->", path)


if __name__ == "__main__":
    main()

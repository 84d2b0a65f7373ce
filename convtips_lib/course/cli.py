"""`convtips run` executes lessons headless and writes the HTML report; `convtips claims` prints a run's claims
ledger; `convtips info` shows the set-up; `convtips train DATA_FOLDER` applies the course's recipe to a folder of
images (one sub-folder per class) and writes a model folder and a report; `convtips ablate DATA_FOLDER` measures
which of the course's tips hold on such a folder (lesson 08's ablation); `convtips predict MODEL_DIR IMAGE...`
classifies images with a model folder.

A run writes into --out: the executed notebooks (one that did not finish is kept, marked incomplete), results/ (each
lesson's JSON and figures), logs/ (each lesson's kernel log), run.json (each lesson's status) and report.html.

An error prints one `convtips: ...` line saying what went wrong and how to fix it (`--debug`: the traceback too).
Exit codes: 0 done; 1 a lesson or an image failed, or an unexpected error; 2 the input (an argument, a file, an
image); 3 the machine (disk full, permissions, network, a missing package); 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
import traceback
import warnings
from pathlib import Path

from .runner import STATUSES, Outcome, UsageError, find_lessons, finish_run, kernel_env, prepare_out, run_lessons

__all__ = ["main", "find_lessons", "Outcome", "STATUSES"]


def cmd_run(args) -> int:
    """Run the chosen lessons; write executed notebooks, results, run.json and report.html under --out."""
    from ..core.profiles import profile
    cfg = profile(args.profile)
    if args.timeout is None:
        args.timeout = cfg.cell_timeout
    if args.timeout < 0:
        raise UsageError(f"--timeout must be 0 (no limit) or a number of seconds, got {args.timeout}")
    if args.seed is not None and not 0 <= args.seed < 2 ** 32:
        raise UsageError(f"--seed must be an integer from 0 to 2**32 - 1 (numpy's range), got {args.seed}: e.g. --seed 1")
    lessons = find_lessons(args.lessons, args.lessons_dir)
    out = prepare_out(args.out, lessons)
    seed = "" if args.seed is None else f", seed {args.seed}"
    print(f"convtips run: {len(lessons)} lesson(s), profile {cfg.name}{seed}, "
          f"cell timeout {args.timeout or 'none'} s, into {out}", flush=True)
    return finish_run(run_lessons(lessons, out, kernel_env(cfg, out, args.seed), args.timeout), out)


def cmd_claims(args) -> int:
    """Print the claims ledger of a run folder (its results/) and the verdict counts."""
    from ..core.results import read_records
    from .report import ledger_text
    folder = Path(args.run_folder)
    if not folder.is_dir():
        raise UsageError(f"run folder {folder} does not exist: pass the --out folder of a `convtips run` "
                         "(default runs/latest)")
    results = folder / "results" if (folder / "results").is_dir() else folder
    records, skipped = read_records(results)
    for warning in skipped:
        print(f"convtips: warning: {warning}", file=sys.stderr)
    if not records:
        raise UsageError(f"no lesson results in {results}: run `convtips run --out {folder}` first")
    print(ledger_text(records))
    return 0


def cmd_info(args) -> int:
    """Print profile, device, data and weights status."""
    from ..core.data import elpv_frame
    from ..core.env import environment
    from ..core.models import OFFLINE_WEIGHTS, sha256sum
    from ..core.profiles import profile
    cfg = profile(args.profile)
    print(json.dumps(dict(environment(cfg), profile_settings=cfg.as_dict()), indent=1))
    df = elpv_frame()
    print(f"ELPV: {len(df)} images, {int(df['defective'].sum())} defective, {int(df['is_valid'].sum())} in valid")
    for name, w in OFFLINE_WEIGHTS.items():
        try:
            ok = sha256sum(w.path()) == w.sha256
            print(f"weights {name}: {'ok (sha256 verified)' if ok else 'CHECKSUM MISMATCH: reinstall ' + w.package}")
        except (ModuleNotFoundError, FileNotFoundError) as e:
            print(f"weights {name}: missing ({e})")
    return 0


def cmd_predict(args) -> int:
    """Print `path<TAB>label<TAB>probability` for each image; a file that cannot be classified is named on stderr and
    the others are still classified (exit code 1 if any failed)."""
    from ..topics.deploy import load_model, predict_files
    model, meta = load_model(args.model_dir)
    rows = predict_files(model, meta, args.images)
    for r in rows:
        if "error" in r:
            print(f"convtips: cannot classify {r['path']}: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['path']}\t{r['label']}\t{r['probability']:.3f}")
    failed = sum("error" in r for r in rows)
    if failed:
        print(f"convtips: {failed} of {len(rows)} image(s) could not be classified (named above); the others are "
              "printed on stdout", file=sys.stderr)
    return int(failed > 0)


def _train_recipe(args):
    """(recipe, notes): the recipe `convtips train` trains (`FOLDER_RECIPE`, or --recipe) with the command line's
    settings, and why a setting was chosen for the data (the image size, unless given)."""
    from .train_job import fit_img_size, load_recipe
    if args.steps is not None and args.epochs is not None:
        raise UsageError(f"--steps {args.steps} and --epochs {args.epochs} both say how long to train: give one "
                         "(--steps: optimizer steps, whatever the folder's size; --epochs: passes over it)")
    policy = None if args.flips is None else "flips+rotation" if args.flips else "rotation"
    recipe = load_recipe(args.recipe, arch=args.arch, img_size=args.img_size, epochs=args.epochs, steps=args.steps,
                         balance=args.balance, policy=policy, lr=args.lr, find_lr=False if args.lr else None)
    if args.img_size is not None or args.recipe is not None:
        return recipe, {}
    recipe, why = fit_img_size(args.data_folder, recipe, args.valid_pct)
    return recipe, dict(img_size=why)


def _budget_text(recipe) -> str:
    head = f"{recipe.freeze_epochs} head epoch(s) + "
    return head + (f"{recipe.steps} optimizer steps" if recipe.steps is not None else f"{recipe.epochs} epoch(s)")


def cmd_train(args) -> int:
    """Train the recipe on DATA_FOLDER; write <out>/model (weights, model.json, recipe.json), <out>/results (the
    record and its figures) and <out>/report.html. Every input is checked before --out is touched."""
    from ..core.profiles import profile
    from .train_job import train_folder
    cfg = profile(args.profile)
    if not 0 < args.valid_pct < 1:
        raise UsageError(f"--valid-pct must lie strictly between 0 and 1 (e.g. 0.25), got {args.valid_pct}")
    from ..core.data import BadImageError
    try:
        recipe, notes = _train_recipe(args)
        lr = f"lr {recipe.lr:g}" + (" or lr_find's, chosen on tune" if recipe.find_lr else "")
        print(f"convtips train: {args.data_folder}, {recipe.arch} at {recipe.img_size} px, {_budget_text(recipe)}, "
              f"{lr}, augmentation {recipe.policy}, into {args.out}", flush=True)
        job = train_folder(args.data_folder, recipe, cfg, args.out, args.valid_pct, distributed=args.distributed,
                           on_bad="skip" if args.skip_bad_images else "raise", notes=notes)
    except BadImageError as e:   # an OSError: said as a usage error, as its message names the file and the fix
        raise UsageError(str(e)) from e
    if job is None:   # not rank 0 of a distributed run: rank 0 reports
        return 0
    if args.skip_bad_images:
        print(f"skipped {len(job.skipped)} unreadable image(s) (--skip-bad-images), listed in the report under "
              "skipped_images")
    ev, base = job.evaluation, job.held_out["baseline"]["accuracy"]
    print(f"validation ({len(ev.y_true)} images): accuracy {ev.metrics['accuracy']:.3f}, balanced accuracy "
          f"{ev.metrics['balanced_accuracy']:.3f}; baseline ({job.baseline['model']}) accuracy {base['value']:.3f}; "
          f"model {job.model_dir}; report {job.report}")
    return 0


def _tip_names(names) -> list:
    """Tip names as typed ('head-first', 'head first', 'one-cycle-schedule'), in the library's spelling; an
    unknown name is passed on as typed (the job refuses it, naming the known)."""
    from ..topics.ablation import ABLATION_TIPS
    key = lambda n: " ".join(n.replace("-", " ").split()).lower()   # noqa: E731
    known = {key(t): t for t in ABLATION_TIPS}
    return [known.get(key(n), n) for n in names]


def cmd_ablate(args) -> int:
    """Run lesson 08's ablation on DATA_FOLDER; write <out>/results, <out>/report.html and <out>/recipe.json. Every
    input is checked before --out is touched; Ctrl-C keeps what finished (exit code 130)."""
    from ..core.data import BadImageError
    from ..core.profiles import profile
    from ..topics.ablation import ABLATION_TIPS
    from .ablate_job import ABLATE_RECIPE, ablate_folder
    from .train_job import fit_img_size, load_recipe
    cfg = profile(args.profile)
    if not 0 < args.valid_pct < 1:
        raise UsageError(f"--valid-pct must lie strictly between 0 and 1 (e.g. 0.25), got {args.valid_pct}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be a whole number of optimizer steps >= 1, got {args.steps}")
    policy = None if args.flips is None else "flips+rotation" if args.flips else "rotation"
    base = load_recipe(args.recipe) if args.recipe else ABLATE_RECIPE
    recipe = base.with_(**{k: v for k, v in dict(arch=args.arch, img_size=args.img_size, policy=policy,
                                                  find_lr=args.find_lr).items() if v is not None})
    try:
        if args.img_size is None and args.recipe is None:
            recipe = fit_img_size(args.data_folder, recipe, args.valid_pct)[0]
        job = ablate_folder(args.data_folder, recipe, cfg, args.out, _tip_names(args.tips or ABLATION_TIPS),
                            args.seeds, args.budget, args.valid_pct, "skip" if args.skip_bad_images else "raise",
                            args.steps)
    except BadImageError as e:
        raise UsageError(str(e)) from e
    for r in job.table[(job.table["metric"] == "balanced_accuracy") &
                       (job.table["direction"] == "in the full recipe")].itertuples() if len(job.table) else []:
        print(f"{r.tip}: {r.value:+.3f} balanced accuracy in the full recipe [{r.low:+.3f}, {r.high:+.3f}]")
    print(f"report {job.report}; recipe chosen on the tune images {job.recipe_file} (convtips train --recipe "
          f"{job.recipe_file})")
    if job.interrupted:
        print("convtips: interrupted (Ctrl-C): the report holds the networks that finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="convtips", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute lessons headless and write the HTML report")
    run.add_argument("lessons", nargs="*", help="lesson prefixes or globs, e.g. 00 01* (default: all)")
    run.add_argument("--profile", default=None, help="smoke, cpu or gpu (default: $CONVTIPS_PROFILE or auto)")
    run.add_argument("--out", default="runs/latest", help="folder for executed notebooks, results and report.html")
    run.add_argument("--lessons-dir", default=None, help="folder holding the lesson notebooks (default: ./lessons)")
    run.add_argument("--timeout", type=int, default=None,
                     help="seconds one cell may take before the lesson fails (default: the profile's cell_timeout, "
                          "600 in smoke, 3600 in cpu and gpu; 0: no limit)")
    run.add_argument("--seed", type=int, default=None, help="seed for every lesson (sets CONVTIPS_SEED)")
    claims = sub.add_parser("claims", help="print the claims ledger of a run: effect, interval and verdict")
    claims.add_argument("run_folder", nargs="?", default="runs/latest", help="a run's --out (default runs/latest)")
    info = sub.add_parser("info", help="print profile, device, data and weights status")
    info.add_argument("--profile", default=None)
    train = sub.add_parser("train", help="train the course's recipe on a folder of images (one sub-folder per class)")
    train.add_argument("data_folder", help="images in class sub-folders (or train/ and valid/ holding them)")
    train.add_argument("--out", default="runs/train",
                       help="folder for model/, results/ and report.html (outside the data folder; the previous "
                            "report is replaced only when the new one is complete)")
    train.add_argument("--recipe", default=None, help="a recipe JSON file (default: the course's recipe)")
    train.add_argument("--arch", default=None, help="override the recipe's architecture")
    train.add_argument("--img-size", type=int, default=None,
                       help="image size in px (default: the images' own, rounded up to a multiple of 32, from 64 "
                            "to the recipe's 160)")
    train.add_argument("--steps", type=int, default=None,
                       help="whole-network optimizer steps (default 500, whatever the folder's size; the epochs are "
                            "as many as that takes, and the one the tune images score best is kept)")
    train.add_argument("--epochs", type=int, default=None,
                       help="train this many whole-network epochs instead of a step budget")
    train.add_argument("--lr", type=float, default=None,
                       help="a fixed peak learning rate (default: fastai's lr_find suggestion or the recipe's 2e-3, "
                            "whichever the tune images score better)")
    train.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                       help="augment with horizontal and vertical flips as well as rotations of up to 10 degrees: "
                            "only when a flipped image keeps its class (solar cells, cells under a microscope; not "
                            "digits or text). Default: rotations alone; --no-flips: rotations alone, whatever the "
                            "recipe file says")
    train.add_argument("--balance", default=None,
                       help="override the recipe's sampling: none, or oversample for classes of very unequal size "
                            "(lesson 04: it helped at 1:20, not at ELPV's 1:2.2)")
    train.add_argument("--valid-pct", type=float, default=0.25, help="share held out when there is no valid/ folder")
    train.add_argument("--skip-bad-images", action="store_true",
                       help="leave out images that cannot be read (counted and listed in the report) instead of "
                            "stopping at the first")
    train.add_argument("--profile", default=None, help="smoke, cpu or gpu: data-loader workers (default: auto)")
    train.add_argument("--distributed", action="store_true",
                       help="train inside fastai's distrib_ctx: run under 'accelerate launch' to use several GPUs")
    ablate = sub.add_parser("ablate", help="which of the course's tips hold on your images: lesson 08's ablation on a "
                                           "folder (one sub-folder per class)")
    ablate.add_argument("data_folder", help="images in class sub-folders (or train/ and valid/ holding them)")
    ablate.add_argument("--tips", nargs="+", default=None,
                        help="the tips to measure (default: all): pretrained-weights head-first augmentation "
                             "balanced-sampling one-cycle-schedule test-time-augmentation ensemble")
    ablate.add_argument("--seeds", type=int, default=2,
                        help="seeds per configuration (default 2: the ensemble needs two; fewer if the budget asks)")
    ablate.add_argument("--budget", type=float, default=15.0,
                        help="minutes of training and evaluation (default 15): seeds, steps and image size give way "
                             "to fit, and the report says what was used")
    ablate.add_argument("--steps", type=int, default=None,
                        help="whole-network optimizer steps per network, instead of fitting them to --budget")
    ablate.add_argument("--out", default="runs/ablate", help="folder for results/, report.html and recipe.json")
    ablate.add_argument("--recipe", default=None, help="a recipe JSON file (default: convtips train's recipe)")
    ablate.add_argument("--arch", default=None, help="override the recipe's architecture")
    ablate.add_argument("--img-size", type=int, default=None,
                        help="image size in px (default: the images' own, as convtips train chooses it)")
    ablate.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                        help="the augmentation tip with flips as well as rotations: only when a flipped image keeps "
                             "its class")
    ablate.add_argument("--find-lr", action=argparse.BooleanOptionalAction, default=None,
                        help="choose each configuration's rate with lr_find, checked on the tune images (about "
                             "doubles the time; default: the recipe's rate for every configuration)")
    ablate.add_argument("--valid-pct", type=float, default=0.25, help="share held out when there is no valid/ folder")
    ablate.add_argument("--skip-bad-images", action="store_true",
                        help="leave out images that cannot be read instead of stopping at the first")
    ablate.add_argument("--profile", default=None, help="smoke, cpu or gpu: data-loader workers (default: auto)")
    predict = sub.add_parser("predict", help="classify image files with an exported model folder")
    predict.add_argument("model_dir", help="a folder written by export_model (model.json + weights.pth)")
    predict.add_argument("images", nargs="+", help="image files")
    _add_debug(ap, sub)
    return ap


def _add_debug(ap: argparse.ArgumentParser, sub) -> None:
    """--debug before or after the sub-command (`convtips --debug train ...`, `convtips train ... --debug`)."""
    text = "on an error, print its traceback as well as the one-line message"
    ap.add_argument("--debug", action="store_true", help=text)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=text)


EXIT_FAILED, EXIT_INPUT, EXIT_MACHINE, EXIT_INTERRUPTED = 1, 2, 3, 130
_LIBRARY = __package__.split(".")[0]               # convtips_lib
_LIBRARY_DIR = Path(__file__).resolve().parents[1]
_DEBUG_HINT = "run with --debug for the traceback"
_OS_FIXES = {   # errno -> what to do, for an OS error the library did not word itself
    errno.ENOSPC: "free space on that disk, or choose another --out (or CONVTIPS_CACHE) on another disk",
    errno.EDQUOT: "free space within your disk quota, or choose another --out (or CONVTIPS_CACHE)",
    errno.EACCES: "check its permissions, or choose another --out (or CONVTIPS_CACHE) that you can write",
    errno.EPERM: "check its permissions, or choose another --out (or CONVTIPS_CACHE) that you can write",
    errno.EROFS: "that disk is read-only: choose another --out (or CONVTIPS_CACHE)",
    errno.ENOENT: "check the path",
}
_CLI_FIXES = {   # a library error (class name) -> its fix on the command line, added to the library's message
    "HubUnreachableError": "On the command line: --arch efficientnet_lite0 trains offline.",
}


def _exit_code(e: BaseException) -> int:
    """The exit code for `e`: the input (2), the machine (3), Ctrl-C (130), else a failure (1)."""
    data = sys.modules.get(f"{_LIBRARY}.core.data")   # not loaded: its BadImageError cannot have been raised
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, (ValueError, FileNotFoundError, getattr(data, "BadImageError", ()))):   # UsageError, ...
        return EXIT_INPUT
    if isinstance(e, (OSError, ImportError)):   # disk, permissions, network (ConnectionError), packages
        return EXIT_MACHINE
    return EXIT_FAILED


def _raised_by_library(e: BaseException) -> bool:
    """Whether `e` is one of the library's errors or was raised in its code: its message then names the fix."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).resolve() if tb is not None else None
    return type(e).__module__.startswith(f"{_LIBRARY}.") or (where is not None and _LIBRARY_DIR in where.parents)


def _os_message(e: OSError) -> str | None:
    """'no space left on device: /out/x.json: free space ...' for an error of the OS, None for any other OSError."""
    if e.errno is None or not e.strerror:
        return None
    where = f": {e.filename}" if e.filename is not None else ""
    fix = _OS_FIXES.get(e.errno)
    return f"{e.strerror[:1].lower()}{e.strerror[1:]}{where}" + (f": {fix}" if fix else "")


def _worker_message(e: BaseException) -> str:
    """`e`'s message; for an error re-raised from a DataLoader worker ('Caught X in DataLoader worker process 0.
    Original Traceback ...'), the original one: the last line of that traceback without the class name."""
    text = str(e)
    if "\nOriginal Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name, _, message = last.partition(": ")
    return message if name.rsplit(".", 1)[-1] == type(e).__name__ else last


def _error_line(e: BaseException, debug: bool = False) -> str:
    """`e` as one `convtips: ...` line: the library's message (it names the fix), an OS error with its path and
    fix, or, for an unexpected error, its type, its message's start and (unless `debug`) the --debug hint."""
    if isinstance(e, KeyboardInterrupt):
        return "convtips: interrupted (Ctrl-C)"
    text, known = _worker_message(e), _raised_by_library(e)
    if isinstance(e, OSError) and not type(e).__module__.startswith(f"{_LIBRARY}.") and _os_message(e):
        text, known = _os_message(e), True   # the OS's own error ('[Errno 28] ...'), wherever it was raised
    if isinstance(e, ModuleNotFoundError) and e.name and "pip install" not in text:
        text += f": pip install {e.name.split('.')[0]}"
    text = " ".join(f"{text} {_CLI_FIXES.get(type(e).__name__, '')}".split()) or type(e).__name__
    if known and _exit_code(e) != EXIT_FAILED:
        return f"convtips: {text}"
    short = text if len(text) <= 300 else text[:297] + "..."
    return f"convtips: unexpected {type(e).__name__}: {short}" + ("" if debug else f" ({_DEBUG_HINT})")


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the console: 'convtips: warning: ...' on one line, without the source line."""
    print(f"convtips: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of the `convtips` console script: an error is one `convtips: ...` line and an exit code
    (`_exit_code`); with --debug its traceback (and warnings in Python's own format) too."""
    args = _parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _warning_line
        try:
            return {"run": cmd_run, "claims": cmd_claims, "info": cmd_info, "train": cmd_train,
                    "ablate": cmd_ablate, "predict": cmd_predict}[args.cmd](args)
        except (Exception, KeyboardInterrupt) as e:   # noqa: BLE001 - every error ends in one line and an exit code
            if debug:
                traceback.print_exc()
            print(_error_line(e, debug), file=sys.stderr)
            return _exit_code(e)


if __name__ == "__main__":
    sys.exit(main())

"""`convtips run` executes lessons headless and writes the HTML report; `convtips info` shows the set-up."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "find_lessons"]


def _lessons_dir() -> Path:
    here = Path.cwd() / "lessons"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "lessons"


def find_lessons(patterns=(), folder: Path | None = None) -> list:
    """Lesson notebooks matching name prefixes or globs (`00`, `01*`), all when none are given."""
    folder = folder or _lessons_dir()
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not every:
        raise FileNotFoundError(f"no lessons found in {folder}: run from the repository root or pass --lessons")
    if not patterns:
        return every
    picked = [nb for nb in every if any(nb.stem.startswith(p.rstrip("*")) or nb.match(p) for p in patterns)]
    if not picked:
        raise ValueError(f"no lesson matches {list(patterns)}: choose from {', '.join(nb.stem for nb in every)}")
    return picked


def _execute(nb_path: Path, out_dir: Path, env: dict, timeout: int) -> Path:
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(nb_path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        out = out_dir / nb_path.name
        nbformat.write(nb, out)
    return out


def cmd_run(args) -> int:
    """Run the chosen lessons, write executed notebooks and report.html under --out."""
    from ..core.profiles import profile
    from .report import write_report
    cfg = profile(args.profile)
    out = Path(args.out).resolve()
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    lessons = find_lessons(args.lessons, Path(args.lessons_dir) if args.lessons_dir else None)
    env = dict(CONVTIPS_PROFILE=cfg.name, CONVTIPS_RESULTS=str(results), CONVTIPS_QUIET="1")
    failed = []
    for i, nb in enumerate(lessons, 1):
        print(f"[{i}/{len(lessons)}] {nb.stem} (profile {cfg.name}) ...", end=" ", flush=True)
        t = time.time()
        try:
            _execute(nb, out, env, args.timeout)
            print(f"ok in {time.time() - t:.0f} s", flush=True)
        except Exception as e:  # a failing lesson is reported, the others still run
            failed.append(nb.stem)
            print(f"FAILED after {time.time() - t:.0f} s: {str(e).strip().splitlines()[-1][:300]}", flush=True)
    report = write_report(results, out / "report.html")
    print(f"executed notebooks in {out}, report: {report}")
    if failed:
        print(f"failed lessons: {', '.join(failed)} (executed copies show the error)", file=sys.stderr)
    return 1 if failed else 0


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


def main(argv=None) -> int:
    """Entry point of the `convtips` console script."""
    ap = argparse.ArgumentParser(prog="convtips", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute lessons headless and write the HTML report")
    run.add_argument("lessons", nargs="*", help="lesson prefixes or globs, e.g. 00 01* (default: all)")
    run.add_argument("--profile", default=None, help="smoke, cpu or gpu (default: $CONVTIPS_PROFILE or auto)")
    run.add_argument("--out", default="runs/latest", help="folder for executed notebooks, results and report.html")
    run.add_argument("--lessons-dir", default=None, help="folder holding the lesson notebooks")
    run.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take")
    info = sub.add_parser("info", help="print profile, device, data and weights status")
    info.add_argument("--profile", default=None)
    args = ap.parse_args(argv)
    try:
        return {"run": cmd_run, "info": cmd_info}[args.cmd](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"convtips: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

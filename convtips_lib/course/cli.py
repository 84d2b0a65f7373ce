"""`convtips run` executes lessons headless and writes the HTML report; `convtips claims` prints a run's claims
ledger; `convtips info` shows the set-up; `convtips train DATA_FOLDER` applies the course's recipe to a folder of
images (one sub-folder per class) and writes a model folder and a report; `convtips predict MODEL_DIR IMAGE...`
classifies images with such a model folder.

A run writes into --out: the executed notebooks (one that did not finish is kept, marked incomplete), results/ (each
lesson's JSON and figures), logs/ (each lesson's kernel log), run.json (each lesson's status) and report.html.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["main", "find_lessons", "Outcome", "STATUSES"]

GRACE = 3               # seconds an interrupted cell has to stop and report where before the kernel is killed
IOPUB_TIMEOUT = 20      # seconds a cell's last outputs may lag its reply (nbclient's 4 s drops them when busy)
STATUSES = ("ok", "failed", "timed out", "interrupted", "not run")
_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UsageError(ValueError):
    """An argument the command cannot work with; printed as `convtips: ...` with exit code 2."""


def _lessons_dir() -> Path:
    here = Path.cwd() / "lessons"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "lessons"


def find_lessons(patterns=(), folder=None) -> list:
    """Lesson notebooks matching name prefixes or globs (`00`, `01*`), all when none are given."""
    folder = Path(folder) if folder else _lessons_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"lessons folder {folder} does not exist: pass --lessons-dir FOLDER (the folder "
                                "holding the NN_name.ipynb lessons) or run from the repository root")
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not every:
        raise FileNotFoundError(f"no lessons (NN_name.ipynb) in {folder}: pass --lessons-dir FOLDER or run from "
                                "the repository root")
    if not patterns:
        return every
    picked = [nb for nb in every if any(nb.stem.startswith(p.rstrip("*")) or nb.match(p) for p in patterns)]
    if not picked:
        raise ValueError(f"no lesson matches {list(patterns)}: choose from {', '.join(nb.stem for nb in every)}")
    return picked


@dataclass
class Outcome:
    """How one lesson of a run ended; `cell` counts code cells (cell 7 is `In [7]` of the executed notebook)."""
    lesson: str
    status: str = "not run"
    seconds: float = 0.0
    cell: int | None = None
    cells: int | None = None
    line: int | None = None
    source: str = ""
    error: str = ""
    notebook: str = ""

    def row(self) -> dict:
        """The outcome as a run.json row."""
        return dict(asdict(self), seconds=round(self.seconds, 1))

    def where(self) -> str:
        """'cell 3 of 8, line 2: x = f(y)', or '' before the first cell."""
        if not self.cell:
            return ""
        line = f", line {self.line}: {self.source}" if self.line else ""
        return f"cell {self.cell} of {self.cells}{line}"


# ---- one lesson: kernel, cells, progress ---------------------------------------------------------------------

class _Cells:
    """Which code cell of a lesson runs now (n of N, since when); nbclient's on_cell_execute hook feeds it."""

    def __init__(self, nb, skip_tag: str = "skip-execution"):
        self.total = sum(c.cell_type == "code" and bool(c.source.strip()) and skip_tag not in c.metadata.get("tags", [])
                         for c in nb.cells)
        self.n, self.cell, self.since = 0, None, time.monotonic()

    def on_cell_execute(self, cell, cell_index) -> None:
        """nbclient hook: a code cell starts."""
        self.n, self.cell, self.since = self.n + 1, cell, time.monotonic()


class _Progress:
    """One terminal line updated every second while a lesson runs ('cell 7/21, 12 s'); silent when not a TTY."""

    def __init__(self, label: str, cells: _Cells, stream=None):
        self.label, self.cells, self.stream = label, cells, stream or sys.stdout
        self.on = self.stream.isatty()
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.on:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.on:
            self._thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(1):
            c, now = self.cells, time.monotonic()
            text = (f"{self.label}  cell {c.n}/{c.total}, {now - c.since:.0f} s (lesson {now - start:.0f} s)" if c.n
                    else f"{self.label}  starting the kernel, {now - start:.0f} s")
            self.stream.write(f"\r{text[:shutil.get_terminal_size().columns - 1]}\x1b[K")
            self.stream.flush()


class _Interrupt:
    """Ctrl-C (or SIGTERM) during a run. The first interrupts the kernel, so the running cell stops where it is and
    its traceback shows the line; if the lesson has not stopped within GRACE seconds it is cancelled. Later ones only
    wait for the kernel to shut down, so that none is left behind."""

    def __init__(self):
        self.signum, self.task, self.km = None, None, None

    def __call__(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
            if self.task is not None and not self.task.done():
                asyncio.ensure_future(self._stop(self.task))

    async def _stop(self, task) -> None:
        if self.km is not None and self.km.has_kernel:
            with contextlib.suppress(Exception):
                await self.km.interrupt_kernel()
            await asyncio.wait({task}, timeout=GRACE)
        if self.task is task and not task.done():
            task.cancel()


def _no_widget_mimic(msg):
    """Skip nbclient's Output-widget mimic (the cause of the stall after the dataset browser).

    nbclient answers each output printed into an ipywidgets Output widget (`interactive_output`) with a comm
    message sent on the kernel's shell socket while it awaits the cell's reply on that same socket; a send can
    consume the socket's wake-up, so on a busy machine the reply sat unread until the timeout (jupyter/nbclient#312).
    Without the mimic nothing is sent while waiting and the widget's output lands in the cell's outputs."""
    return None


def _kernel_manager(log):
    """A python3 kernel manager whose transport is encrypted (CurveZMQ) where pyzmq and jupyter_client allow it."""
    import zmq
    from jupyter_client import AsyncKernelManager
    kw = {}
    if zmq.has("curve") and "transport_encryption" in AsyncKernelManager.class_trait_names():
        kw["transport_encryption"] = "auto"
    return AsyncKernelManager(kernel_name="python3", log=log, **kw)


def _client(nb, nb_path: Path, timeout: int, log, cells: _Cells):
    """An nbclient NotebookClient: the per-cell timeout, no widget state or mimic, logs into the lesson's log."""
    from nbclient import NotebookClient
    client = NotebookClient(nb, km=_kernel_manager(log), timeout=timeout or None, iopub_timeout=IOPUB_TIMEOUT,
                            store_widget_state=False, log=log, on_cell_execute=cells.on_cell_execute,
                            kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}})
    client.comm_open_handlers["jupyter.widget"] = _no_widget_mimic
    return client


async def _stop_kernel(client, tasks: set, now: bool) -> None:
    """Cancel nbclient's leftover pollers (`tasks`), close the channels and shut the kernel down (at once if `now`)."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        if client.kc is not None:
            client.kc.stop_channels()
        if client.km is not None and client.km.has_kernel:
            await client.km.shutdown_kernel(now=now)
    except Exception as e:  # noqa: BLE001 - logged; the run goes on
        client.log.error("shutting the kernel down: %r", e)


async def _start_kernel(client, env: dict, kernel_log) -> None:
    """Start the kernel with `env`, its stdout and stderr going to the lesson's log, and connect to it."""
    from nbclient.util import ensure_async
    await client.async_start_new_kernel(env=env, stdout=kernel_log, stderr=kernel_log)
    await client.async_start_new_kernel_client()
    reply = await client.async_wait_for_reply(await ensure_async(client.kc.kernel_info()))
    if reply and "language_info" in reply["content"]:
        client.nb.metadata["language_info"] = reply["content"]["language_info"]


async def _stop_cell(client, tasks: set) -> None:
    """Interrupt a stalled cell and wait briefly for its traceback (nbclient's `tasks` collect it): it shows the line
    the cell hung on."""
    with contextlib.suppress(Exception):
        await client.km.interrupt_kernel()
        if tasks:
            await asyncio.wait(tasks, timeout=GRACE)


def _leftover(before: set) -> set:
    """The tasks started since `before` other than this one: nbclient's pollers of the last cell."""
    return asyncio.all_tasks() - before - {asyncio.current_task()}


async def _execute(client, env: dict, log_path: Path, interrupt: _Interrupt) -> None:
    """Run every cell of the client's notebook in a fresh kernel, which is always shut down afterwards."""
    from nbclient.exceptions import CellTimeoutError
    before, ok = asyncio.all_tasks(), False
    with open(log_path, "ab") as kernel_log:
        try:
            await _start_kernel(client, env, kernel_log)
            for index, cell in enumerate(client.nb.cells):
                if interrupt.signum is not None:   # Ctrl-C arrived between two cells
                    raise asyncio.CancelledError
                await client.async_execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            ok = True
        except CellTimeoutError:
            await _stop_cell(client, _leftover(before))
            raise
        finally:
            interrupt.task = None   # a Ctrl-C from here on must not cancel the shutdown
            await _stop_kernel(client, _leftover(before), now=not ok)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(_ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raising_line(cell) -> tuple:
    """(line number, source line) of `cell` where its error was raised: the innermost frame in this cell of the
    error output's traceback (a library call when the error comes from the library)."""
    tb = "\n".join(_ANSI.sub("", line) for o in cell.outputs if o.get("output_type") == "error"
                   for line in o.get("traceback", []))
    found = re.findall(rf"Cell In\s*\[{cell.get('execution_count') or ''}\],\s*line (\d+)", tb)
    lines = cell.source.splitlines()
    if not found or not 0 < int(found[-1]) <= len(lines):
        return None, ""
    return int(found[-1]), _one_line(lines[int(found[-1]) - 1], 200)


def _judge(outcome: Outcome, e: BaseException, cells: _Cells, interrupt: _Interrupt, timeout: int, log_path) -> None:
    """Fill `outcome` (status, where, why) from the exception that ended the lesson."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    outcome.cell = cells.n or None
    if cells.cell is not None:
        outcome.line, outcome.source = _raising_line(cells.cell)
    if interrupt.signum is not None:
        how = "Ctrl-C" if interrupt.signum == signal.SIGINT else signal.Signals(interrupt.signum).name
        outcome.status, outcome.error = "interrupted", f"stopped by {how}"
    elif isinstance(e, CellTimeoutError):
        outcome.status = "timed out"
        outcome.error = f"no reply within {timeout} s (--timeout): raise it if the cell is only slow"
    elif isinstance(e, CellExecutionError):
        outcome.status = "failed"
        outcome.error = _one_line(f"{e.ename}: {e.evalue}" if e.ename else (str(e).split("\n") + ["error"])[0])
    elif isinstance(e, DeadKernelError):
        outcome.status, outcome.error = "failed", f"the kernel died (out of memory?): see its log {log_path}"
    else:
        outcome.status = "failed"
        outcome.error = _one_line(f"{type(e).__name__}: {e}") + f" (kernel log: {log_path})"


def _mark(nb, outcome: Outcome) -> None:
    """Record the outcome in the notebook's metadata and, when the lesson did not finish, in a first markdown cell."""
    import nbformat
    nb.metadata["convtips"] = dict(outcome.row(), complete=outcome.status == "ok", run_at=time.strftime("%F %T"))
    if outcome.status == "ok":
        return
    where = outcome.where() or "before its first cell"
    note = nbformat.v4.new_markdown_cell(
        f"**Incomplete: {outcome.status}** during {where} by `convtips run` on {time.strftime('%F %T')} "
        f"({outcome.error}). The cells after it did not run; rerun with `convtips run {outcome.lesson}`.")
    if nb.get("nbformat_minor", 5) < 5:
        note.pop("id", None)
    nb.cells.insert(0, note)


def _save_notebook(nb, path: Path, outcome: Outcome) -> Path:
    """Write the executed (or partial, marked) notebook atomically."""
    import nbformat

    from ..core.store import atomic_write
    _mark(nb, outcome)
    return atomic_write(path, nbformat.writes(nb))


def _lesson_log(path: Path) -> logging.Logger:
    """A logger writing only into the lesson's log file (nbclient's and jupyter_client's messages)."""
    log = logging.getLogger(f"convtips.run.{path.stem}")
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(logging.FileHandler(path, encoding="utf-8"))
    return log


async def _run_lesson(nb_path: Path, out: Path, env: dict, timeout: int, interrupt: _Interrupt, label: str):
    """Execute one lesson into `out`; returns its Outcome (the notebook is kept even when it did not finish)."""
    import nbformat
    outcome, start = Outcome(nb_path.stem), time.monotonic()
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception as e:  # noqa: BLE001 - a broken lesson file is reported like a failing lesson
        outcome.status, outcome.error = "failed", f"cannot read {nb_path}: {_one_line(e)}"
        return outcome
    cells, log_path = _Cells(nb), out / "logs" / f"{nb_path.stem}.log"
    outcome.cells, log = cells.total, _lesson_log(log_path)
    client = _client(nb, nb_path, timeout, log, cells)
    interrupt.km = client.km
    try:
        with _Progress(label, cells):
            interrupt.task = asyncio.ensure_future(_execute(client, env, log_path, interrupt))
            await interrupt.task
        outcome.status = "ok"
    except BaseException as e:  # noqa: BLE001 - CancelledError (Ctrl-C) included: judged, never re-raised
        _judge(outcome, e, cells, interrupt, timeout, log_path)
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
    outcome.seconds, outcome.notebook = time.monotonic() - start, str(out / nb_path.name)
    _save_notebook(nb, out / nb_path.name, outcome)
    return outcome


# ---- a run: stale records, the lessons in turn, run.json and the report -----------------------------------------

def _forget_record(results: Path, lesson: str, stems) -> None:
    """Delete `lesson`'s old record and figures, so a failed rerun never shows the previous run's numbers."""
    old, names = results / f"{lesson}.json", []
    try:
        names = [n for n in json.loads(old.read_text()).get("figures", []) if Path(str(n)).name == n]
    except (OSError, ValueError, AttributeError):
        pass
    longer = [s for s in stems if s != lesson and s.startswith(lesson + "_")]
    pngs = [p for p in results.glob(f"{lesson}_*.png") if not any(p.name.startswith(s + "_") for s in longer)]
    for p in [old, *(results / n for n in names), *pngs]:
        p.unlink(missing_ok=True)


def _print_outcome(o: Outcome, label: str, tty: bool) -> None:
    """'[2/3] 01_x  failed  12 s', and for a failure where it happened and the exception's last line."""
    print(f"{label}  " if tty else "", f"{o.status}  {o.seconds:.0f} s", sep="", flush=True)
    if o.status in ("failed", "timed out"):
        print("\n".join(f"    {x}" for x in (o.where(), o.error) if x), flush=True)


async def _run_all(lessons: list, out: Path, env: dict, timeout: int, interrupt: _Interrupt, stems) -> list:
    """Run the lessons in turn (Ctrl-C stops the one running and skips the rest); returns their Outcomes."""
    loop, outcomes, tty = asyncio.get_running_loop(), [], sys.stdout.isatty()
    for sig in _EXIT:
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        for i, nb in enumerate(lessons, 1):
            if interrupt.signum is not None:
                outcomes.append(Outcome(nb.stem))
                continue
            label = f"[{i}/{len(lessons)}] {nb.stem}"
            print("" if tty else f"{label}  ", end="", flush=True)
            _forget_record(out / "results", nb.stem, stems)
            outcomes.append(await _run_lesson(nb, out, env, timeout, interrupt, label))
            _print_outcome(outcomes[-1], label, tty)
    finally:
        for sig in _EXIT:
            loop.remove_signal_handler(sig)
    return outcomes


def _prepare_out(path: str) -> Path:
    """The --out folder with results/ and logs/ inside, created if missing; a clear error when it cannot be."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {path} is a file, not a folder: pass a folder for the executed notebooks and the "
                         "report (created if missing), e.g. --out runs/mine")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {path} lies inside {existing}, which is a file: choose a path under a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {existing} (permission denied): choose another --out, e.g. under your "
                         "home folder, or make it writable")
    try:
        for sub in ("results", "logs"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for old in ("run.json", "report.html"):   # a run that dies half-way leaves none of the last run's
            (out / old).unlink(missing_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the --out folder {out}: {e.strerror or e}: choose another --out") from None
    return out


def _kernel_env(cfg, out: Path, seed: int | None) -> dict:
    """The kernels' environment: ours plus the profile, results folder, quiet training and the seed if given."""
    env = dict(os.environ, CONVTIPS_PROFILE=cfg.name, CONVTIPS_RESULTS=str(out / "results"), CONVTIPS_QUIET="1",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    if seed is not None:
        env["CONVTIPS_SEED"] = str(seed)
    return env


def _interrupt_message(outcomes: list, interrupt: _Interrupt) -> str:
    """'interrupted during lesson 00_x, cell 7 of 21; partial notebook kept at ..., marked incomplete'."""
    word = "interrupted" if interrupt.signum == signal.SIGINT else "terminated"
    hit = next((o for o in outcomes if o.status == "interrupted"), None)
    if hit is None:
        done = [o.lesson for o in outcomes if o.status != "not run"]
        return f"{word} after lesson {done[-1] if done else '(none)'}; the lessons after it did not run"
    where = f"cell {hit.cell} of {hit.cells}" if hit.cell else "before its first cell"
    return f"{word} during lesson {hit.lesson}, {where}; partial notebook kept at {hit.notebook}, marked incomplete"


def _finish(outcomes: list, out: Path, interrupt: _Interrupt) -> int:
    """Write run.json and the report, print where they are (and what was skipped); returns the exit code."""
    from ..core.store import atomic_write
    from ..core.results import read_records
    from .report import write_report
    rows = [o.row() for o in outcomes]
    atomic_write(out / "run.json", json.dumps(rows, indent=1))
    for warning in read_records(out / "results")[1]:
        print(f"convtips: warning: {warning}", file=sys.stderr)
    report = write_report(out / "results", out / "report.html", run=rows)
    print(f"report: {report}", flush=True)
    bad = [o.lesson for o in outcomes if o.status in ("failed", "timed out")]
    if bad:
        print(f"convtips: {', '.join(bad)} did not finish: the executed notebooks in {out} show where", file=sys.stderr)
    if interrupt.signum is not None:
        print(f"convtips: {_interrupt_message(outcomes, interrupt)}", file=sys.stderr)
        return _EXIT[interrupt.signum]
    return 1 if bad else 0


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
    out = _prepare_out(args.out)
    seed = "" if args.seed is None else f", seed {args.seed}"
    print(f"convtips run: {len(lessons)} lesson(s), profile {cfg.name}{seed}, "
          f"cell timeout {args.timeout or 'none'} s, into {out}", flush=True)
    interrupt = _Interrupt()
    stems = [p.stem for p in find_lessons((), lessons[0].parent)]
    outcomes = asyncio.run(_run_all(lessons, out, _kernel_env(cfg, out, args.seed), args.timeout, interrupt, stems))
    return _finish(outcomes, out, interrupt)


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
    return int(any("error" in r for r in rows))


def _train_recipe_from(args):
    from ..topics.recipe import Recipe
    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    overrides = {k: v for k, v in dict(arch=args.arch, img_size=args.img_size, epochs=args.epochs,
                                       balance=args.balance).items() if v is not None}
    return Recipe.from_dict({**recipe.to_dict(), **overrides})


def _rank() -> int:
    from fastai.torch_core import rank_distrib
    return rank_distrib()


def cmd_train(args) -> int:
    """Train the recipe on DATA_FOLDER; write <out>/model (weights, model.json, recipe.json), <out>/results (the
    record and its figures) and <out>/report.html."""
    from ..core.profiles import profile
    from ..core.results import Results
    from ..core.train import history
    from ..topics.deploy import export_model
    from ..topics.recipe import recipe_eval, train_recipe
    from ..ui.plots import plot_confusion, plot_history
    from .report import write_report
    cfg, recipe = profile(args.profile), _train_recipe_from(args)
    if not 0 < args.valid_pct < 1:
        raise UsageError(f"--valid-pct must lie strictly between 0 and 1 (e.g. 0.25), got {args.valid_pct}")
    out = _prepare_out(args.out)
    print(f"convtips train: {args.data_folder}, {recipe.arch} at {recipe.img_size} px, {recipe.freeze_epochs} + "
          f"{recipe.epochs} epoch(s), into {out}", flush=True)
    learn = train_recipe(args.data_folder, recipe, cfg, args.valid_pct, distributed=args.distributed)
    if args.distributed and _rank():   # one of several processes `accelerate launch` started: rank 0 writes
        return 0
    ev = recipe_eval(learn, recipe)
    model_dir = export_model(learn, out / "model", recipe.arch, recipe.img_size, resize="crop", metrics=ev.metrics)
    recipe.save(model_dir / "recipe.json")
    res = Results("train", cfg, seed=recipe.seed, out=out / "results")
    res.metric("recipe", recipe.to_dict())
    res.metric("validation", dict(ev.metrics, images=len(ev.y_true), per_class_recall=ev.per_class_recall))
    res.figure(plot_history(history(learn), ("train_loss", "valid_loss", "balanced_accuracy"), by="phase"), "history")
    res.figure(plot_confusion(ev), "confusion")
    res.save()
    report = write_report(out / "results", out / "report.html")
    print(f"validation ({len(ev.y_true)} images): accuracy {ev.metrics['accuracy']:.3f}, balanced accuracy "
          f"{ev.metrics['balanced_accuracy']:.3f}; model {model_dir}; report {report}")
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
    train.add_argument("--out", default="runs/train", help="folder for model/, results/ and report.html")
    train.add_argument("--recipe", default=None, help="a recipe JSON file (default: the course's recipe)")
    train.add_argument("--arch", default=None, help="override the recipe's architecture")
    train.add_argument("--img-size", type=int, default=None, help="override the recipe's image size (px)")
    train.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (whole network)")
    train.add_argument("--balance", default=None,
                       help="override the recipe's sampling: none, or oversample for classes of very unequal size "
                            "(lesson 04: it helped at 1:20, not at ELPV's 1:2.2)")
    train.add_argument("--valid-pct", type=float, default=0.25, help="share held out when there is no valid/ folder")
    train.add_argument("--profile", default=None, help="smoke, cpu or gpu: data-loader workers (default: auto)")
    train.add_argument("--distributed", action="store_true",
                       help="train inside fastai's distrib_ctx: run under 'accelerate launch' to use several GPUs")
    predict = sub.add_parser("predict", help="classify image files with an exported model folder")
    predict.add_argument("model_dir", help="a folder written by export_model (model.json + weights.pth)")
    predict.add_argument("images", nargs="+", help="image files")
    return ap


def main(argv=None) -> int:
    """Entry point of the `convtips` console script."""
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "claims": cmd_claims, "info": cmd_info, "train": cmd_train,
                "predict": cmd_predict}[args.cmd](args)
    except (ValueError, FileNotFoundError) as e:   # UsageError and ProfileError are ValueErrors
        print(f"convtips: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convtips: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

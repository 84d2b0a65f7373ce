"""The notebook runner behind `convtips run`: each lesson executed headless in a fresh python3 kernel (nbclient), a
per-cell timeout, a progress line, Ctrl-C that stops the running cell where it is and leaves no kernel behind, and
each ending judged as an `Outcome` (ok, failed, timed out, interrupted, not run) that names the cell and line.

`run_notebook` executes one notebook; `run_lessons` runs lessons in turn into a run folder (`prepare_out`) and
`finish_run` writes its run.json and report.html. A run folder holds the executed notebooks (one that did not finish
is kept, marked incomplete), results/ (each lesson's JSON and figures), logs/ (each lesson's kernel log), run.json
(each lesson's status) and report.html.
"""
from __future__ import annotations

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["STATUSES", "Outcome", "Run", "UsageError", "find_lessons", "prepare_out", "kernel_env", "run_notebook",
           "run_lessons", "finish_run"]

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


def find_lessons(patterns: Sequence[str] = (), folder: str | Path | None = None) -> list[Path]:
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


async def _drive(client, cells: _Cells, env: dict, log_path: Path, interrupt: _Interrupt, label: str) -> None:
    """Execute the client's notebook under a progress line; Ctrl-C (`interrupt`) can stop it."""
    interrupt.km = client.km
    with _Progress(label, cells):
        interrupt.task = asyncio.ensure_future(_execute(client, env, log_path, interrupt))
        await interrupt.task


async def _run_lesson(nb_path: Path, out_path: Path, log_path: Path, env: dict, timeout: int, interrupt: _Interrupt,
                      label: str) -> Outcome:
    """Execute one lesson into `out_path`; returns its Outcome (the notebook is kept even when it did not finish)."""
    import nbformat
    outcome, start = Outcome(nb_path.stem), time.monotonic()
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception as e:  # noqa: BLE001 - a broken lesson file is reported like a failing lesson
        outcome.status, outcome.error = "failed", f"cannot read {nb_path}: {_one_line(e)}"
        return outcome
    cells = _Cells(nb)
    outcome.cells, log = cells.total, _lesson_log(log_path)
    client = _client(nb, nb_path, timeout, log, cells)
    try:
        await _drive(client, cells, env, log_path, interrupt, label)
        outcome.status = "ok"
    except BaseException as e:  # noqa: BLE001 - CancelledError (Ctrl-C) included: judged, never re-raised
        _judge(outcome, e, cells, interrupt, timeout, log_path)
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
    outcome.seconds, outcome.notebook = time.monotonic() - start, str(out_path)
    _save_notebook(nb, out_path, outcome)
    return outcome


@contextlib.contextmanager
def _signals(interrupt: _Interrupt):
    """Route Ctrl-C and SIGTERM to `interrupt` while the block runs (inside the running event loop)."""
    loop = asyncio.get_running_loop()
    for sig in _EXIT:
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        yield interrupt
    finally:
        for sig in _EXIT:
            loop.remove_signal_handler(sig)


def run_notebook(nb_path: str | Path, out_path: str | Path, timeout: int = 0, env: dict | None = None,
                 log_path: str | Path | None = None, label: str | None = None) -> Outcome:
    """Execute one notebook in a fresh kernel into `out_path` (kept, marked, if it does not finish): its Outcome."""
    nb_path, out_path = Path(nb_path), Path(out_path)
    log_path = Path(log_path) if log_path else out_path.with_suffix(".log")
    for folder in (out_path.parent, log_path.parent):
        folder.mkdir(parents=True, exist_ok=True)

    async def one() -> Outcome:
        with _signals(_Interrupt()) as interrupt:
            return await _run_lesson(nb_path, out_path, log_path, dict(os.environ) if env is None else env, timeout,
                                     interrupt, label or nb_path.stem)
    return asyncio.run(one())


# ---- a run: stale records, the lessons in turn, run.json and the report -----------------------------------------

@dataclass
class Run:
    """A run's Outcomes, one per lesson, and the signal that stopped it (None when none did)."""
    outcomes: list = field(default_factory=list)
    signum: int | None = None

    def rows(self) -> list:
        """The outcomes as run.json's rows."""
        return [o.row() for o in self.outcomes]


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


def _sibling_stems(lessons: list) -> list:
    """The stems of every lesson beside the chosen ones (a shorter lesson name must not claim a longer one's figures)."""
    return sorted({p.stem for folder in {nb.parent for nb in lessons} for p in folder.glob("[0-9][0-9]_*.ipynb")})


async def _run_all(lessons: list, out: Path, env: dict, timeout: int, interrupt: _Interrupt, stems) -> list:
    """Run the lessons in turn (Ctrl-C stops the one running and skips the rest); returns their Outcomes."""
    outcomes, tty = [], sys.stdout.isatty()
    with _signals(interrupt):
        for i, nb in enumerate(lessons, 1):
            if interrupt.signum is not None:
                outcomes.append(Outcome(nb.stem))
                continue
            label = f"[{i}/{len(lessons)}] {nb.stem}"
            print("" if tty else f"{label}  ", end="", flush=True)
            _forget_record(out / "results", nb.stem, stems)
            outcomes.append(await _run_lesson(nb, out / nb.name, out / "logs" / f"{nb.stem}.log", env, timeout,
                                              interrupt, label))
            _print_outcome(outcomes[-1], label, tty)
    return outcomes


def run_lessons(lessons: Sequence[str | Path], out: str | Path, env: dict, timeout: int) -> Run:
    """Run `lessons` in turn into the run folder `out` (from `prepare_out`), each lesson's stale record removed first."""
    lessons, out, interrupt = [Path(nb) for nb in lessons], Path(out), _Interrupt()
    outcomes = asyncio.run(_run_all(lessons, out, env, timeout, interrupt, _sibling_stems(lessons)))
    return Run(outcomes, interrupt.signum)


def _written_by_a_run(nb: Path) -> bool:
    """Whether notebook `nb` is an executed notebook `convtips run` wrote (marked in its metadata by `_mark`)."""
    try:
        return "status" in json.loads(nb.read_text(encoding="utf-8")).get("metadata", {}).get("convtips", {})
    except (OSError, ValueError, AttributeError):
        return False


def _refuse_sources(out: Path, path, sources: Sequence[Path]) -> None:
    """UsageError when the run folder `out` is (or lies inside) the folder of a source notebook, or holds a
    notebook of a source's name that no run wrote: the run would overwrite the lessons it executes."""
    for folder in sorted({Path(nb).resolve().parent for nb in sources}):
        if out == folder or folder in out.parents:
            raise UsageError(f"--out {path} is {'' if out == folder else 'inside '}the lessons folder {folder}: the "
                             "executed notebooks would overwrite or mix with the lessons. Choose a folder outside it, "
                             "e.g. --out runs/latest")
    for nb in sources:
        target = out / Path(nb).name
        if target.exists() and not _written_by_a_run(target):
            raise UsageError(f"--out {path} holds {target.name}, a notebook no `convtips run` wrote (a source "
                             "lesson?): the run would overwrite it. Choose another --out, e.g. --out runs/latest, "
                             "or move that notebook away")


def prepare_out(path: str | Path, sources: Sequence[str | Path] = ()) -> Path:
    """The --out folder with results/ and logs/ inside, created if missing; a clear error when it cannot be, or when
    the run would overwrite one of `sources` (the lesson notebooks it executes)."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {path} is a file, not a folder: pass a folder for the executed notebooks and the "
                         "report (created if missing), e.g. --out runs/mine")
    _refuse_sources(out, path, [Path(nb) for nb in sources])
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


def kernel_env(cfg, out: Path, seed: int | None = None) -> dict:
    """The kernels' environment: ours plus the profile, results folder, quiet training and the seed if given."""
    env = dict(os.environ, CONVTIPS_PROFILE=cfg.name, CONVTIPS_RESULTS=str(out / "results"), CONVTIPS_QUIET="1",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    if seed is not None:
        env["CONVTIPS_SEED"] = str(seed)
    return env


def _interrupt_message(run: Run) -> str:
    """'interrupted during lesson 00_x, cell 7 of 21; partial notebook kept at ..., marked incomplete'."""
    word = "interrupted" if run.signum == signal.SIGINT else "terminated"
    hit = next((o for o in run.outcomes if o.status == "interrupted"), None)
    if hit is None:
        done = [o.lesson for o in run.outcomes if o.status != "not run"]
        return f"{word} after lesson {done[-1] if done else '(none)'}; the lessons after it did not run"
    where = f"cell {hit.cell} of {hit.cells}" if hit.cell else "before its first cell"
    return f"{word} during lesson {hit.lesson}, {where}; partial notebook kept at {hit.notebook}, marked incomplete"


def finish_run(run: Run, out: str | Path) -> int:
    """Write run.json and the report, print where they are (and what was skipped); returns the exit code."""
    from ..core.results import read_records
    from ..core.store import atomic_write
    from .report import write_report
    out, rows = Path(out), run.rows()
    atomic_write(out / "run.json", json.dumps(rows, indent=1))
    for warning in read_records(out / "results")[1]:
        print(f"convtips: warning: {warning}", file=sys.stderr)
    report = write_report(out / "results", out / "report.html", run=rows)
    print(f"report: {report}", flush=True)
    bad = [o.lesson for o in run.outcomes if o.status in ("failed", "timed out")]
    if bad:
        print(f"convtips: {', '.join(bad)} did not finish: the executed notebooks in {out} show where", file=sys.stderr)
    if run.signum is not None:
        print(f"convtips: {_interrupt_message(run)}", file=sys.stderr)
        return _EXIT[run.signum]
    return 1 if bad else 0

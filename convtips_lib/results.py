"""Results record: each lesson's key numbers and claims, written atomically as JSON for the course report."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .env import environment

__all__ = ["Results", "atomic_write", "results_dir", "load_results"]


def results_dir() -> Path:
    """Where results go: `$CONVTIPS_RESULTS`, else ./results."""
    return Path(os.environ.get("CONVTIPS_RESULTS", "results"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes | str) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _verdict(supported: bool, decidable: bool) -> str:
    if not decidable:
        return "undecided: this profile is too small to decide (run CONVTIPS_PROFILE=cpu or gpu)"
    return "supported" if supported else "not supported"


class Results:
    """A lesson's record: profile, seed, environment, metrics, claims (with measured effect) and figures."""

    def __init__(self, lesson: str, cfg, seed: int | None = None, out: Path | None = None):
        self.lesson, self.cfg, self.out = lesson, cfg, Path(out or results_dir())
        self.data = dict(lesson=lesson, profile=cfg.as_dict(), seed=cfg.seed if seed is None else seed,
                         environment=environment(cfg), metrics={}, tables={}, claims=[], figures=[])

    def metric(self, name: str, value) -> None:
        """Record one number (or small dict/list of numbers) under `name`."""
        self.data["metrics"][name] = value

    def table(self, name: str, df) -> None:
        """Record a small table (pandas DataFrame) under `name`."""
        self.data["tables"][name] = json.loads(df.to_json(orient="records"))

    def claim(self, claim: str, effect: float, supported: bool, unit: str = "", decidable: bool | None = None) -> dict:
        """Record whether this run supports `claim`, with the measured `effect`; undecided where the profile is too small."""
        decidable = self.cfg.decides_claims if decidable is None else decidable
        row = dict(claim=claim, effect=float(effect), unit=unit, supported=bool(supported) if decidable else None,
                   verdict=_verdict(bool(supported), decidable))
        self.data["claims"] = [c for c in self.data["claims"] if c["claim"] != claim] + [row]
        return row

    def figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as PNG next to the JSON and list it in the record."""
        import io
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        path = atomic_write(self.out / f"{self.lesson}_{name}.png", buf.getvalue())
        if path.name not in self.data["figures"]:
            self.data["figures"].append(path.name)
        return path

    def save(self) -> Path:
        """Write `<out>/<lesson>.json` atomically; returns its path."""
        self.data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        return atomic_write(self.out / f"{self.lesson}.json", json.dumps(self.data, indent=1, default=_jsonable))


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def load_results(folder=None) -> list:
    """Every lesson record (dict) in `folder`, sorted by lesson name."""
    folder = Path(folder or results_dir())
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

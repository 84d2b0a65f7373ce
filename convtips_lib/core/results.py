"""Results record: each lesson's key numbers and claims, written atomically as JSON for the course report.

A claim is judged by its 95 % confidence interval, never by the sign of a point estimate:
supported (the interval lies wholly on the side the claim predicts), refuted (wholly on the other side),
inconclusive (it straddles), or undecided (the profile is too small to decide, e.g. smoke).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import pandas as pd

from .env import environment
from .measure import Estimate
from .store import atomic_write

__all__ = ["SAME_WITHIN", "FAR_AHEAD", "Results", "describe", "says", "resolution", "settle_factor", "showed",
           "claim_kind", "claim_margin", "KINDS", "VERDICTS", "load_results", "ledger", "power_summary", "results_dir"]

VERDICTS = ("supported", "refuted", "inconclusive", "undecided")
PREDICTS = ("greater", "less", "within")   # effect > threshold, effect < threshold, |effect| <= threshold
# practical thresholds claims are judged against (on a metric in [0, 1])
SAME_WITHIN = 0.02   # two results within 2 points count as the same ("matches", "reaches the same accuracy")
FAR_AHEAD = 0.05     # "far ahead": at least 5 points better
UNDECIDED_NOTE = "this profile is too small to decide: run with CONVTIPS_PROFILE=cpu or gpu"


def results_dir() -> Path:
    """Where results go: `$CONVTIPS_RESULTS`, else ./results."""
    return Path(os.environ.get("CONVTIPS_RESULTS", "results"))


def verdict(low: float, high: float, predicts: str = "greater", threshold: float = 0.0) -> str:
    """'supported', 'refuted' or 'inconclusive' from a 95 % CI [low, high] and what the claim predicts.

    greater: supported when low > threshold, refuted when high < threshold.
    less: supported when high < threshold, refuted when low > threshold.
    within (an equivalence, |effect| <= threshold): supported when the whole CI lies in [-threshold, threshold],
    refuted when it lies wholly outside.
    """
    if predicts not in PREDICTS:
        raise ValueError(f"predicts must be one of {', '.join(PREDICTS)}, got {predicts!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if predicts == "greater":
        return "supported" if low > threshold else "refuted" if high < threshold else "inconclusive"
    if predicts == "less":
        return "supported" if high < threshold else "refuted" if low > threshold else "inconclusive"
    t = abs(threshold)
    return "supported" if -t <= low and high <= t else "refuted" if low > t or high < -t else "inconclusive"


def signed(x) -> str:
    """A signed number with 3 decimals below 10, fewer above ('+0.084', '+12.5', '+443'); 'n/a' if missing."""
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if abs(x) < 10 else f"{x:+.1f}" if abs(x) < 100 else f"{x:+.0f}"


def interval_text(low, high, effect) -> str:
    """'[low, high]', or 'exact' for a zero-width interval at the effect (a deterministic measurement)."""
    if low == high == effect and signed(low) != "n/a":
        return "exact"
    return f"[{signed(low)}, {signed(high)}]"


def resolution(low: float, high: float) -> float | None:
    """Half the width of a 95 % CI [low, high]: the smallest effect, beyond a claim's threshold, that an experiment
    of this size can tell from none (an interval this wide around a smaller effect still straddles the threshold);
    None when the interval is not finite."""
    return (high - low) / 2 if math.isfinite(low) and math.isfinite(high) else None


KINDS = ("training effect", "speed", "mechanism", "other")
_SCORES = ("accuracy", "recall", "f1", "auc", "precision")


def claim_kind(row: dict) -> str:
    """What a claim measures, from its method and unit: 'mechanism' (an exact, deterministic check), 'speed' (a
    ratio of times or costs), 'training effect' (a score such as accuracy of trained models: what power is about),
    else 'other'."""
    unit, method = str(row.get("unit", "")).lower(), str(row.get("method", "")).lower()
    if method.startswith("exact") or row.get("half_width") == 0:
        return "mechanism"
    if "faster" in unit or "fewer" in unit or "x (" in unit:
        return "speed"
    return "training effect" if any(s in unit.replace("-", "_") for s in _SCORES) else "other"


def claim_margin(predicts: str, threshold: float) -> float | None:
    """The m of a claim of the form 'within m' or 'no worse than m' (greater than -m, less than +m), else None."""
    if predicts == "within" or (predicts == "greater" and threshold < 0) or (predicts == "less" and threshold > 0):
        return abs(threshold)
    return None


def describe(row: dict) -> str:
    """A claim row as prose: '+0.084 balanced accuracy, 95 % CI [+0.051, +0.118]: supported'; an inconclusive one
    also says what the run could see ('...: inconclusive; this run cannot see effects below 0.030')."""
    unit = f" {row['unit']}" if row.get("unit") else ""
    exact = str(row.get("method", "")).startswith("exact (")   # `exact`'s zero-width check, not a binomial interval
    ci = "exact" if exact else f"95 % CI {interval_text(*row['ci'], None)}"
    text = f"{signed(row['effect'])}{unit}, {ci}: {row['verdict']}"
    if row["verdict"] == "inconclusive" and row.get("detectable") is not None:
        text += f"; this run cannot see effects below {row['detectable']:.3f}"
        if row.get("margin_resolvable") is False and row.get("predicts") == "within":
            text += (f", wider than the claim's margin of {row['margin']:.3f}, so it could not have been supported "
                     "at this size")
    return text


def says(row: dict, supported: str, refuted: str, inconclusive: str, undecided: str | None = None,
         detectable: bool = True) -> str:
    """The sentence for `row`'s verdict: every sentence of a lesson that states an outcome is chosen here, so prose
    never states a conclusion the run did not reach. `undecided` defaults to a note that the profile is too small
    (with the measured effect, unless `detectable` is False); an inconclusive sentence is followed by what the run
    could detect (`detectable`; False where the sentence follows `describe(row)`, which already says both)."""
    measured = f" ({describe(row)})" if detectable else ""
    text = dict(supported=supported, refuted=refuted, inconclusive=inconclusive,
                undecided=undecided or f"Not decided: {UNDECIDED_NOTE}{measured}.")[row["verdict"]]
    if detectable and row["verdict"] == "inconclusive" and row.get("detectable") is not None and "cannot see" not in text:
        text += f" (This run cannot see effects below {row['detectable']:.3f}: more seeds, cells or the gpu profile " \
                "would.)"
    return text


def settle_factor(row: dict) -> float | None:
    """How many times this run's predictions (cells x seeds) an inconclusive claim would need for an interval that
    excludes its threshold, if the measured effect is the true one: intervals narrow as 1 / sqrt(n), so
    (half-width / distance of the effect from the threshold)^2. None when the effect sits on the threshold or is
    not finite (no size would settle it)."""
    half, effect = row.get("half_width"), row.get("effect")
    if half is None or not isinstance(effect, (int, float)) or not math.isfinite(effect):
        return None
    t = abs(row.get("threshold") or 0.0)
    gap = t - abs(effect) if row.get("predicts") == "within" else abs(effect - (row.get("threshold") or 0.0))
    return (half / abs(gap)) ** 2 if abs(gap) > 1e-9 else None


_HEADINGS = dict(supported="Held", refuted="Did not hold", inconclusive="Not decided by this run",
                 undecided="Not decided in this profile")


def showed(claims: list, why: dict | None = None, profile: str = "") -> str:
    """A lesson's closing markdown, 'What this run showed': every claim under the heading of its verdict with
    `describe`, an inconclusive one with what would settle it (`settle_factor`), and the lesson's reason for a
    claim where `why` has one: {claim text: {verdict: sentence}}, chosen by the verdict as `says` does, so nothing
    is asserted that the run did not reach."""
    why = why or {}
    unknown = sorted(set(why) - {c["claim"] for c in claims})
    if unknown:
        raise ValueError(f"why names claims this run did not record: {unknown}")
    lines = [f"### What this run showed{f' (profile `{profile}`)' if profile else ''}"]
    for verdict in VERDICTS:
        rows = [c for c in claims if c["verdict"] == verdict]
        if not rows:
            continue
        lines.append(f"\n**{_HEADINGS[verdict]}** ({len(rows)}):\n")
        for c in rows:
            text = f"- {c['claim']}: {describe(c)}."
            if verdict == "inconclusive":
                k = settle_factor(c)
                text += (" Its interval is not finite: this run measured too little to bound it."
                         if c.get("half_width") is None else
                         f" About {k:.0f}x this run's predictions would settle an effect this size." if k and k < 1e3
                         else " The effect sits at the claim's threshold: no affordable run would settle it.")
            reason = why.get(c["claim"], {}).get(verdict)   # the lesson's sentence for this verdict, if any
            if reason:
                text += f" {reason}"
            lines.append(text.rstrip())
    if all(c["verdict"] == "undecided" for c in claims):
        lines.append(f"\n{UNDECIDED_NOTE[0].upper()}{UNDECIDED_NOTE[1:]}.")
    return "\n".join(lines)


def _finite(x):
    """A float, or None for NaN/infinity (strict JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


class Results:
    """A lesson's record: profile, seed, environment, metrics, claims (effect, interval, verdict) and figures."""

    def __init__(self, lesson: str, cfg, seed: int | None = None, out: Path | None = None):
        self.lesson, self.cfg, self.out = lesson, cfg, Path(out or results_dir())
        self.data = dict(lesson=lesson, profile=cfg.as_dict(), seed=cfg.seed if seed is None else seed,
                         environment=environment(cfg), metrics={}, tables={}, claims=[], figures=[])

    def metric(self, name: str, value) -> None:
        """Record one number (or small dict/list of numbers) under `name`."""
        self.data["metrics"][name] = value

    def table(self, name: str, df) -> None:
        """Record a small table (pandas DataFrame) under `name`; per-image columns (arrays, e.g. y_pred) are left out."""
        per_image = [c for c in df.columns if len(df) and hasattr(df[c].iloc[0], "__len__")
                     and not isinstance(df[c].iloc[0], str)]
        self.data["tables"][name] = json.loads(df.drop(columns=per_image).to_json(orient="records"))

    def claim(self, claim: str, est: Estimate, predicts: str = "greater", threshold: float = 0.0, unit: str = "",
              decidable: bool | None = None) -> dict:
        """Record `claim` with its measured `est` (effect and 95 % CI) and the verdict; undecided where the profile
        is too small. `predicts`/`threshold` state what the claim expects, e.g. greater than 0.01 (one point)."""
        decidable = self.cfg.decides_claims if decidable is None else decidable
        half = resolution(est.low, est.high)
        row = dict(claim=claim, effect=est.effect, ci=[est.low, est.high], unit=unit or est.metric,
                   predicts=predicts, threshold=threshold, method=est.method, half_width=half, detectable=half,
                   verdict=verdict(est.low, est.high, predicts, threshold) if decidable else "undecided",
                   note="" if decidable else UNDECIDED_NOTE)
        row["kind"] = claim_kind(row)
        row["margin"] = claim_margin(predicts, threshold)
        row["margin_resolvable"] = None if row["margin"] is None or half is None else bool(row["margin"] >= half)
        self.data["claims"] = [c for c in self.data["claims"] if c["claim"] != claim] + [row]
        return row

    def showed(self, why: dict | None = None) -> str:
        """The closing 'What this run showed' markdown of this lesson's claims (see `showed`)."""
        return showed(self.data["claims"], why, self.cfg.name)

    def claims(self) -> pd.DataFrame:
        """The claims so far as a table: claim, effect, interval, verdict."""
        return _claims_frame(self.data["claims"])

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
        """Write `<out>/<lesson>.json` atomically (NaN and infinity as null); returns its path."""
        self.data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.data["null_means"] = "NaN or infinity in the run (strict JSON has neither)"
        text = json.dumps(_strict(self.data), indent=1, default=_jsonable, allow_nan=False)
        return atomic_write(self.out / f"{self.lesson}.json", text)


def _strict(x):
    """`x` with every NaN or infinite float replaced by None (written as null)."""
    if isinstance(x, float):
        return _finite(x)
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def _jsonable(x):
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        return _strict(x.item())
    if hasattr(x, "tolist"):
        return _strict(x.tolist())
    return str(x)


def _claims_frame(claims: list) -> pd.DataFrame:
    rows = [dict(claim=c["claim"], effect=c["effect"], ci_low=c["ci"][0], ci_high=c["ci"][1], unit=c["unit"],
                 verdict=c["verdict"]) for c in claims]
    frame = pd.DataFrame(rows, columns=["claim", "effect", "ci_low", "ci_high", "unit", "verdict"])
    # numbers stay numbers: a saved NaN comes back from JSON as null (None), and a column of None is not numeric
    return frame.astype({"effect": float, "ci_low": float, "ci_high": float})


_CLAIM_KEYS = ("claim", "effect", "ci", "unit", "verdict")


def _record_problem(rec) -> str | None:
    """Why `rec` (parsed JSON) is not a lesson record, or None when it is one."""
    if not isinstance(rec, dict):
        return f"not a lesson record (a JSON {type(rec).__name__}, not an object)"
    missing = [k for k in ("lesson", "profile", "claims") if k not in rec]
    if missing:
        return f"not a lesson record: no {', '.join(repr(k) for k in missing)} key"
    if not isinstance(rec["profile"], dict) or "name" not in rec["profile"]:
        return "not a lesson record: 'profile' has no 'name'"
    if not isinstance(rec["claims"], list):
        return "not a lesson record: 'claims' is not a list"
    for i, c in enumerate(rec["claims"], 1):
        if not isinstance(c, dict) or any(k not in c for k in _CLAIM_KEYS) or len(c.get("ci") or ()) != 2:
            return f"claim {i} lacks one of {', '.join(_CLAIM_KEYS)} (ci as [low, high])"
    return None


def _read_record(path: Path):
    """(record, None) for a usable lesson record, else (None, why not)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not valid JSON ({e}), perhaps half-written"
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    problem = _record_problem(rec)
    return (None, problem) if problem else (rec, None)


def read_records(folder) -> tuple:
    """(records, skipped): every usable `<lesson>.json` in `folder` sorted by lesson, and one message per file
    skipped because it is unreadable, half-written or not a lesson record."""
    records, skipped = [], []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        rec, why = _read_record(path)
        if rec is None:
            skipped.append(f"skipped {path}: {why}; delete it or rerun its lesson")
        else:
            records.append(rec)
    return sorted(records, key=lambda r: str(r["lesson"])), skipped


def load_results(folder=None) -> list:
    """Every usable lesson record (dict) in `folder` (default `results_dir()`), sorted by lesson; a file that is not
    one is skipped with a warning naming it."""
    records, skipped = read_records(folder or results_dir())
    for msg in skipped:
        warnings.warn(msg, stacklevel=2)
    return records


def _power_columns(claims: list) -> dict:
    """Each claim's kind and interval half-width (read, or worked out for records written before they were kept)."""
    halves = [c.get("half_width") if "half_width" in c else
              resolution(*(float("nan") if v is None else float(v) for v in c["ci"])) for c in claims]
    return dict(kind=[c.get("kind") or claim_kind(dict(c, half_width=h)) for c, h in zip(claims, halves)],
                half_width=pd.array([h for h in halves], dtype="Float64").astype(float))


def ledger(records: list) -> pd.DataFrame:
    """Every claim of every lesson record: lesson, claim, effect, ci_low, ci_high, unit, verdict, profile, kind
    (`claim_kind`) and half_width (of the interval: what the experiment could resolve)."""
    frames = [_claims_frame(r.get("claims", [])).assign(lesson=r["lesson"], profile=r["profile"]["name"],
                                                        **_power_columns(r.get("claims", [])))
              for r in records]
    cols = ["lesson", "claim", "effect", "ci_low", "ci_high", "unit", "verdict", "profile", "kind", "half_width"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def power_summary(table: pd.DataFrame) -> str:
    """One sentence on how much a ledger could decide: its training-effect claims and their median half-width."""
    hw = table.loc[table["kind"] == "training effect", "half_width"].dropna() if len(table) else pd.Series([])
    if hw.empty:
        return "No claim here measures a training effect."
    return (f"{len(hw)} claims measure a training effect; the median half-width of their 95 % intervals is "
            f"{hw.median():.3f} (an effect smaller than about that cannot be told from none).")

"""The course report: one HTML page that opens with the claims ledger (every claim of every lesson, its effect,
95 % interval and verdict, and a forest plot), then the run's lessons with their status, then each lesson's numbers,
claims and figures. Records are read by `core.results.read_records`, which skips (with a reason) files it cannot use."""
from __future__ import annotations

import base64
import html
import io
import shutil
import textwrap
from collections import Counter
from pathlib import Path

from ..core.results import VERDICTS, atomic_write, interval_text, ledger, power_summary, read_records, signed

__all__ = ["ledger_text", "verdict_summary", "write_report"]

def verdict_summary(verdicts) -> str:
    """'12 claims: 7 supported, 1 refuted, 3 inconclusive, 1 undecided' (verdicts in their usual order)."""
    counts = Counter(verdicts)
    order = list(VERDICTS) + sorted(v for v in counts if v not in VERDICTS)
    n = sum(counts.values())
    return f"{n} claim{'' if n == 1 else 's'}: " + ", ".join(f"{counts[v]} {v}" for v in order)


_HEAD = ["lesson", "claim", "effect", "95 % interval", "unit", "verdict", "profile"]


def _text_rows(table) -> list:
    """The ledger's rows as text cells, the claim unwrapped."""
    return [[str(r["lesson"]), " ".join(str(r["claim"]).split()), signed(r["effect"]), _ci(r),
             str(r["unit"])[:14], str(r["verdict"]), str(r["profile"])] for _, r in table.iterrows()]


def _wrapped(rows: list, claim_width: int) -> list:
    """Each row with its claim wrapped to `claim_width`, continuation lines on rows of their own."""
    out = []
    for r in rows:
        lines = textwrap.wrap(r[1], claim_width) or [""]
        out += [r[:1] + lines[:1] + r[2:]] + [["", line, "", "", "", "", ""] for line in lines[1:]]
    return out


def ledger_text(records, width: int | None = None) -> str:
    """The claims ledger as a fixed-width text table (claims wrapped to fit `width` columns), then the verdict
    counts."""
    table = ledger(records)
    rows = [_HEAD] + _text_rows(table)
    others = sum(max(len(r[i]) for r in rows) for i in (0, 2, 3, 4, 5, 6)) + 2 * (len(_HEAD) - 1)
    width = width or shutil.get_terminal_size((120, 24)).columns
    claim_width = max(20, min(70, width - others, max(len(r[1]) for r in rows)))
    rows = _wrapped(rows, claim_width)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    lines = ["  ".join(c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["", verdict_summary(table["verdict"])])


def _ci(row) -> str:
    """A ledger row's interval: '[low, high]' or 'exact'."""
    return interval_text(row["ci_low"], row["ci_high"], row["effect"])


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _forest_png(table) -> str:
    """The forest plot (`plot_forest`) of the ledger's claims with finite intervals, as an <img> (PNG inlined)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..ui.plots import plot_forest
    finite = table.copy()
    for col in ("effect", "ci_low", "ci_high"):
        finite[col] = pd.to_numeric(finite[col], errors="coerce")
    finite = finite.dropna(subset=["effect", "ci_low", "ci_high"])
    if finite.empty:
        return ""
    fig = plot_forest(finite)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f"<img class='forest' alt='forest plot of every claim' src='data:image/png;base64,{_b64(buf.getvalue())}'>"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ledger_html(records) -> str:
    """The claims ledger: a table with one row per claim coloured by verdict, and the forest plot."""
    table = ledger(records)
    if table.empty:
        return "<h2 id='ledger'>Claims ledger</h2><p>No claims recorded in this run.</p>"
    rows = "".join(f"<tr class='{_esc(r['verdict'])}'><td>{_esc(r['lesson'])}</td><td>{_esc(r['claim'])}</td>"
                   f"<td>{signed(r['effect'])} {_esc(r['unit'])}</td><td>{_ci(r)}</td><td>{_resolves(r)}</td>"
                   f"<td>{_esc(r['verdict'])}</td><td>{_esc(r['profile'])}</td></tr>" for _, r in table.iterrows())
    return (f"<h2 id='ledger'>Claims ledger</h2><p>{_esc(verdict_summary(table['verdict']))}. "
            f"{_esc(power_summary(table))}</p>"
            "<table class='ledger'><tr><th>lesson</th><th>claim</th><th>effect</th><th>95 % interval</th>"
            f"<th>resolves</th><th>verdict</th><th>profile</th></tr>{rows}</table>{_forest_png(table)}")


def _resolves(row) -> str:
    """The smallest effect a training-effect claim could tell from none ('±0.031'); '' for other kinds."""
    h = row.get("half_width")
    return f"±{h:.3f}" if row.get("kind") == "training effect" and h == h and h is not None else ""


def _why(o: dict) -> str:
    """Where and why a lesson did not finish: 'cell 3 of 8, line 2: f(x) -> ValueError: ...'."""
    where = f"cell {o['cell']} of {o.get('cells') or '?'}" if o.get("cell") else ""
    if where and o.get("line"):
        where += f", line {o['line']}: {o.get('source', '')}"
    return " -> ".join(x for x in (where, o.get("error") or "") if x)


def _run_html(run: list) -> str:
    """Every lesson of the run with its status, time and, where it did not finish, why."""
    rows = "".join(f"<tr class='status-{_esc(o['status']).replace(' ', '-')}'><td>{_esc(o['lesson'])}</td>"
                   f"<td>{_esc(o['status'])}</td><td>{o['seconds']:.0f} s</td><td>{_esc(_why(o))}</td></tr>"
                   for o in run)
    return ("<h2 id='run'>Lessons in this run</h2><table class='run'><tr><th>lesson</th><th>status</th>"
            f"<th>time</th><th>why it did not finish</th></tr>{rows}</table>")


def _claims_html(claims: list) -> str:
    rows = "".join(f"<tr class='{_esc(c['verdict'])}'><td>{_esc(c['claim'])}</td>"
                   f"<td>{signed(c['effect'])} {_esc(c.get('unit', ''))}</td>"
                   f"<td>[{signed(c['ci'][0])}, {signed(c['ci'][1])}]</td><td>{_esc(c['verdict'])}</td></tr>"
                   for c in claims)
    return ("<table><tr><th>claim</th><th>measured effect</th><th>95 % interval</th><th>in this run</th></tr>"
            f"{rows}</table>")


def _metrics_html(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in metrics.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _figures_html(folder: Path, names: list) -> str:
    return "".join(f"<img alt='{_esc(n)}' src='data:image/png;base64,{_b64((folder / n).read_bytes())}'>"
                   for n in names if isinstance(n, str) and (folder / n).is_file())


def _pct(d: dict) -> str:
    """'97.3 % [94.1, 99.0]' of {value, low, high} (fractions)."""
    return f"{100 * d['value']:.1f} % [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def _diff(d: dict) -> str:
    return f"{100 * d['value']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _held_out_html(h: dict, baseline: dict) -> str:
    """The network and the baseline on the held-out images, with 95 % intervals, and their paired difference."""
    rows = [("network (the recipe)", _pct(h["network"]["accuracy"]), _pct(h["network"]["balanced_accuracy"])),
            (f"baseline: {baseline.get('model', '')}, C {baseline.get('C', '')} (chosen on tune)",
             _pct(h["baseline"]["accuracy"]), _pct(h["baseline"]["balanced_accuracy"])),
            ("network - baseline (paired)", _diff(h["network_minus_baseline"]["accuracy"]),
             _diff(h["network_minus_baseline"]["balanced_accuracy"]))]
    body = "".join(f"<tr><td>{_esc(a)}</td><td>{_esc(b)}</td><td>{_esc(c)}</td></tr>" for a, b, c in rows)
    return (f"<h3>The {_esc(h['images'])} held-out images (never used for a choice)</h3><table><tr><th>model</th>"
            f"<th>accuracy, 95 % interval</th><th>balanced accuracy, 95 % interval</th></tr>{body}</table>")


def _chosen_html(c: dict) -> str:
    """What the run chose on the tune images, and why."""
    lr = c.get("lr") or {}
    rows = [("image size", f"{c.get('img_size')} px", c.get("img_size_why", "")),
            ("augmentation", (c.get("augmentation") or {}).get("policy", ""), (c.get("augmentation") or {}).get("why", "")),
            ("how long", f"{c.get('epochs')} epoch(s) of {c.get('batches_per_epoch')} batches", c.get("epochs_why", "")),
            ("epoch kept", c.get("kept_epoch"), f"the epoch (counting the head epochs) the {c.get('tune_images')} tune "
                                               "images (held out of the training images) scored best, balanced "
                                               "accuracy; its weights are the model's"),
            ("learning rate", f"{lr.get('used', ''):.3g}" if isinstance(lr.get("used"), float) else lr.get("used"),
             lr.get("why", ""))]
    body = "".join(f"<tr><td>{_esc(a)}</td><td>{_esc(b)}</td><td>{_esc(w)}</td></tr>" for a, b, w in rows)
    return f"<h3>What was chosen, and why</h3><table><tr><th>setting</th><th>value</th><th>why</th></tr>{body}</table>"


def _mistakes_html(rows: list) -> str:
    """The held-out images the network got wrong with the highest confidence, naming each file."""
    if not rows:
        return "<h3>Most confident mistakes</h3><p>The network got every held-out image right.</p>"
    body = "".join(f"<tr><td>{_esc(r['path'])}</td><td>{_esc(r['true'])}</td><td>{_esc(r['predicted'])}</td>"
                   f"<td>{r['probability']:.3f}</td></tr>" for r in rows)
    return ("<h3>Most confident mistakes</h3><table class='mistakes'><tr><th>file</th><th>true</th><th>predicted</th>"
            f"<th>probability</th></tr>{body}</table>")


def _train_html(metrics: dict) -> str:
    """`convtips train`'s own sections: the held-out comparison, the choices and the most confident mistakes."""
    parts = []
    if isinstance(metrics.get("held_out"), dict):
        parts.append(_held_out_html(metrics["held_out"], metrics.get("baseline") or {}))
    if isinstance(metrics.get("chosen_on_tune"), dict) and "lr" in metrics["chosen_on_tune"]:
        parts.append(_chosen_html(metrics["chosen_on_tune"]))
    if isinstance(metrics.get("confident_mistakes"), list):
        parts.append(_mistakes_html(metrics["confident_mistakes"]))
    return "".join(parts)


def _ablate_html(metrics: dict) -> str:
    """`convtips ablate`'s own sections: what ran and why (the budget), the tips not measured and why, whether it
    was interrupted, the per-configuration table and the recipe the tune images chose."""
    a = metrics.get("ablate")
    if not isinstance(a, dict):
        return ""
    b = a.get("budget") or {}
    parts = ["<h3>What ran</h3>", f"<p>{_esc(b.get('why', ''))}; {_esc(a.get('networks_finished'))} of "
             f"{_esc(a.get('networks_planned'))} networks trained" +
             (f" in {a['seconds'] / 60:.1f} minutes" if isinstance(a.get("seconds"), (int, float)) else "") +
             ". Every choice (the epoch kept, the recipe's settings) "
             "was made on tune images held out of the training images; the effects are measured on the held-out "
             "images.</p>"]
    if a.get("interrupted"):
        parts.append("<p class='problem'><b>Interrupted</b> (Ctrl-C): the table and the claims hold the tips whose "
                     "runs all finished; run again for the rest.</p>")
    if a.get("skipped_tips"):
        parts.append("<p>Not measured:</p><ul>" + "".join(f"<li><b>{_esc(t)}</b>: {_esc(w)}</li>"
                                                          for t, w in a["skipped_tips"].items()) + "</ul>")
    rows = "".join(f"<tr><td>{_esc(c['config'])}</td><td>{_fmt(c['balanced_accuracy'])} [{_fmt(c['low'])}, "
                   f"{_fmt(c['high'])}]</td><td>{_fmt(c['accuracy'])} [{_fmt(c['acc_low'])}, {_fmt(c['acc_high'])}]"
                   f"</td><td>{_esc(c['seeds'])}</td><td>{c['train_s']:.0f} s</td></tr>" for c in a.get("configs") or [])
    parts.append("<h3>Each configuration on the held-out images (seeds pooled)</h3><table><tr><th>configuration</th>"
                 "<th>balanced accuracy, 95 % interval</th><th>accuracy, 95 % interval</th><th>seeds</th>"
                 f"<th>training time</th></tr>{rows}</table>")
    changed = [c for c in a.get("choices") or [] if c.get("switched")]
    parts.append("<h3>The recipe the tune images chose (recipe.json)</h3><p>" +
                 (_esc("; ".join(f"{c['tip']}: {c['setting']} {c['course']} -> {c['other']} "
                                 f"({signed(c['value'])} on tune)" for c in changed)) if changed else
                  "No switch was clearly better on the tune images: the recipe keeps its settings.") + "</p>")
    return "".join(parts)


def _record_html(rec: dict, folder: Path) -> str:
    env = rec.get("environment") or {}
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    if rec.get("lesson") == "ablate":
        return (f"{_ablate_html(metrics)}<p>profile <b>{_esc(rec['profile']['name'])}</b>, seed "
                f"{_esc(rec.get('seed'))}, device {_esc(env.get('device'))}, saved {_esc(rec.get('saved_at'))}</p>"
                f"{_claims_html(rec['claims'])}{_figures_html(folder, rec.get('figures') or [])}")
    return (f"{_train_html(metrics) if rec.get('lesson') == 'train' else ''}<p>profile <b>{_esc(rec['profile']['name'])}</b>, seed {_esc(rec.get('seed'))}, device "
            f"{_esc(env.get('device'))}, torch {_esc(env.get('torch'))}, fastai {_esc(env.get('fastai'))}, saved "
            f"{_esc(rec.get('saved_at'))}</p>{_metrics_html(metrics)}{_claims_html(rec['claims'])}"
            f"{_figures_html(folder, rec.get('figures') or [])}")


def _lesson_html(name: str, rec: dict | None, outcome: dict | None, folder: Path, earlier: bool) -> str:
    """One lesson's section: its status when it did not finish, then its record (or why there is none)."""
    parts = [f"<h2 class='lesson'>{_esc(name)}</h2>"]
    if outcome and outcome["status"] != "ok":
        parts.append(f"<p class='problem'><b>{_esc(outcome['status'])}</b>: {_esc(_why(outcome))}</p>")
    if rec is None and outcome and outcome["status"] == "ok":
        parts.append("<p>This lesson records no results.</p>")
    elif rec is None:
        parts.append("<p>No results recorded: the lesson did not reach its <code>res.save()</code>.</p>")
    else:
        earlier = earlier or bool(outcome and outcome["status"] == "not run")
        parts += ["<p><i>not run this time: results of an earlier run</i></p>" if earlier else "",
                  _record_html(rec, folder)]
    return "".join(parts)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;vertical-align:top} .supported{background:#dfd}"
        ".refuted{background:#fdd} .inconclusive{background:#fec} .undecided{background:#eee}"
        ".status-failed,.status-timed-out,.status-interrupted,.problem{background:#fdd} .status-not-run{color:#888}"
        "img{max-width:520px;margin:4px;border:1px solid #eee} img.forest{max-width:1000px}")


def write_report(results_folder, out_file, run: list | None = None) -> Path:
    """Write one self-contained HTML page from the `<lesson>.json` records in `results_folder`: the claims ledger
    first, then `run` (rows of lesson, status, seconds, cell, cells, error) when given, then each lesson."""
    folder = Path(results_folder)
    records, skipped = read_records(folder)
    by_name = {r["lesson"]: r for r in records}
    outcomes = {o["lesson"]: o for o in run or []}
    names = list(outcomes) + [n for n in by_name if n not in outcomes]
    parts = [f"<html><head><meta charset='utf-8'><title>convtips report</title><style>{_CSS}</style></head><body>",
             "<h1>convtips: what this run measured</h1>", _ledger_html(records),
             _run_html(run) if run else ""]
    parts += [_lesson_html(n, by_name.get(n), outcomes.get(n), folder, bool(run) and n not in outcomes)
              for n in names]
    if skipped:
        parts.append("<h2 id='skipped'>Files skipped</h2><ul>" + "".join(f"<li>{_esc(s)}</li>" for s in skipped)
                     + "</ul>")
    parts.append("</body></html>")
    return atomic_write(out_file, "\n".join(parts))

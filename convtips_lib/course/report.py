"""The course report: one HTML page with every lesson's key numbers, claims and figures."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..core.results import atomic_write, load_results

__all__ = ["write_report"]


def _metrics_html(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in metrics.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _claims_html(claims: list) -> str:
    rows = "".join(f"<tr class='{(c['verdict'].split(':')[0]).replace(' ', '-')}'><td>{html.escape(c['claim'])}</td>"
                   f"<td>{c['effect']:+.4g} {html.escape(c['unit'])}</td><td>{html.escape(c['verdict'])}</td></tr>"
                   for c in claims)
    return f"<table><tr><th>claim</th><th>measured effect</th><th>in this run</th></tr>{rows}</table>"


def _figures_html(folder: Path, names: list) -> str:
    imgs = []
    for n in names:
        p = folder / n
        if p.exists():
            imgs.append(f"<img alt='{html.escape(n)}' src='data:image/png;base64,"
                        f"{base64.b64encode(p.read_bytes()).decode()}'>")
    return "".join(imgs)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px} .supported{background:#dfd} .not-supported{background:#fdd}"
        ".undecided{background:#eee} img{max-width:520px;margin:4px;border:1px solid #eee}")


def write_report(results_folder, out_file) -> Path:
    """Collect every `<lesson>.json` in `results_folder` into one self-contained HTML file."""
    folder = Path(results_folder)
    parts = [f"<html><head><meta charset='utf-8'><title>convtips report</title><style>{_CSS}</style></head><body>",
             "<h1>convtips: what this run measured</h1>"]
    for rec in load_results(folder):
        env = rec.get("environment", {})
        parts += [f"<h2>{html.escape(rec['lesson'])}</h2>",
                  f"<p>profile <b>{rec['profile']['name']}</b>, seed {rec['seed']}, device {env.get('device')}, "
                  f"torch {env.get('torch')}, fastai {env.get('fastai')}, saved {rec.get('saved_at')}</p>",
                  _metrics_html(rec["metrics"]), _claims_html(rec["claims"]),
                  _figures_html(folder, rec.get("figures", []))]
    parts.append("</body></html>")
    return atomic_write(out_file, "\n".join(parts))

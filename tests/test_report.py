"""Tests for convtips_lib.course.report: the HTML page (claims ledger first, the run's lessons, each lesson), the
robust record loader, and the text ledger of `convtips claims`."""
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from convtips_lib.core.measure import Estimate  # noqa: E402
from convtips_lib.core.profiles import profile  # noqa: E402
from convtips_lib.core.results import Results  # noqa: E402
from convtips_lib.core.results import read_records  # noqa: E402
from convtips_lib.course.report import ledger_text, verdict_summary, write_report  # noqa: E402


def _record(folder, lesson, decides, low=0.05, high=0.15):
    res = Results(lesson, profile("smoke").with_(decides_claims=decides), out=folder)
    res.metric("valid_accuracy", 0.8125)
    res.claim("pretrained <beats> random", Estimate((low + high) / 2, low, high, "accuracy", "paired bootstrap"))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    res.figure(fig, "curve")
    plt.close(fig)
    res.save()


def test_report_opens_with_the_ledger_coloured_by_verdict_and_the_forest_plot(tmp_path):
    _record(tmp_path, "00_start_here", decides=False)
    _record(tmp_path, "01_reuse", decides=True)
    page = write_report(tmp_path, tmp_path / "out" / "report.html").read_text()
    ledger = page[page.index("Claims ledger"):page.index("<h2 class='lesson'>")]
    assert "<tr class='undecided'><td>00_start_here</td><td>pretrained &lt;beats&gt; random</td>" in ledger
    assert "<tr class='supported'><td>01_reuse</td>" in ledger and "[+0.050, +0.150]" in ledger
    assert "2 claims: 1 supported, 0 refuted, 0 inconclusive, 1 undecided" in ledger
    assert ledger.count("class='forest'") == 1
    assert page.count("<h2 class='lesson'>") == 2 and "0.8125" in page
    assert page.count("data:image/png;base64,") == 3                  # the forest plot and each lesson's figure


def test_report_lists_every_lesson_of_the_run_with_status_time_and_why(tmp_path):
    _record(tmp_path, "00_ok", decides=True)
    run = [dict(lesson="00_ok", status="ok", seconds=12.3, cell=None, cells=4, error=""),
           dict(lesson="01_bad", status="failed", seconds=3.0, cell=2, cells=5, line=3, source="f(x)",
                error="ValueError: x must be positive"),
           dict(lesson="02_slow", status="timed out", seconds=600.0, cell=1, cells=2, error="no reply within 600 s"),
           dict(lesson="03_later", status="not run", seconds=0.0, cell=None, cells=None, error="")]
    page = write_report(tmp_path, tmp_path / "report.html", run=run).read_text()
    table = page[page.index("Lessons in this run"):]
    assert "<td>00_ok</td><td>ok</td><td>12 s</td>" in table
    assert "<td>01_bad</td><td>failed</td><td>3 s</td><td>cell 2 of 5, line 3: f(x) -&gt; ValueError: x must be" \
           in table
    assert "<td>02_slow</td><td>timed out</td>" in table and "<td>03_later</td><td>not run</td>" in table
    assert "No results recorded" in page                             # a failed lesson without a record says so


def test_unreadable_and_foreign_records_are_skipped_with_the_file_named(tmp_path):
    _record(tmp_path, "00_good", decides=True)
    (tmp_path / "01_half.json").write_text('{"lesson": "01_half", "metrics": {"a": "\x01')
    (tmp_path / "02_list.json").write_text("[1, 2]")
    (tmp_path / "03_other.json").write_text(json.dumps({"name": "other tool"}))
    (tmp_path / "04_claim.json").write_text(json.dumps({"lesson": "04", "profile": {"name": "cpu"},
                                                        "claims": [{"claim": "no interval"}]}))
    records, skipped = read_records(tmp_path)
    assert [r["lesson"] for r in records] == ["00_good"]
    assert len(skipped) == 4 and all(s.startswith(f"skipped {tmp_path}") for s in skipped)
    assert "01_half.json: not valid JSON (Invalid control character" in skipped[0]
    assert "not a lesson record" in skipped[1] and "no 'lesson', 'profile', 'claims' key" in skipped[2]
    assert "claim 1 lacks" in skipped[3]
    page = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert "00_good" in page and "02_list.json" in page


def test_ledger_text_is_a_fixed_width_table_with_wrapped_claims_and_counts(tmp_path):
    _record(tmp_path, "00_a", decides=True)
    _record(tmp_path, "01_b", decides=True, low=-0.2, high=-0.1)
    text = ledger_text(read_records(tmp_path)[0], width=100)
    head, rule, *rows = text.splitlines()
    assert head.split() == ["lesson", "claim", "effect", "95", "%", "interval", "unit", "verdict", "profile"]
    assert set(rule) <= {"-", " "} and rows[0].startswith("00_a") and "supported" in rows[0]
    assert "refuted" in rows[1] and "[-0.200, -0.100]" in rows[1]
    assert text.endswith("2 claims: 1 supported, 1 refuted, 0 inconclusive, 0 undecided")
    assert verdict_summary(["supported"]) == "1 claim: 1 supported, 0 refuted, 0 inconclusive, 0 undecided"


def test_empty_results_folder_gives_a_page(tmp_path):
    page = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert "<h1>" in page and "No claims recorded" in page and "<h2 class='lesson'>" not in page


def test_the_ledger_says_what_each_training_effect_could_resolve(tmp_path):
    _record(tmp_path, "00_start_here", decides=True, low=0.01, high=0.05)
    page = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert "<td>±0.020</td>" in page and "median half-width of their 95 % intervals is 0.020" in page
    old = json.loads((tmp_path / "00_start_here.json").read_text())
    for c in old["claims"]:            # a record written before claims kept their kind and half-width
        c.pop("kind"), c.pop("half_width")
    (tmp_path / "00_start_here.json").write_text(json.dumps(old))
    assert "<td>±0.020</td>" in write_report(tmp_path, tmp_path / "report.html").read_text()

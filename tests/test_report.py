"""Tests for convtips_lib.report: one self-contained HTML page from the lessons' results JSON."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from convtips_lib.profiles import profile  # noqa: E402
from convtips_lib.report import write_report  # noqa: E402
from convtips_lib.results import Results  # noqa: E402


def _record(folder, lesson, decides):
    res = Results(lesson, profile("smoke").with_(decides_claims=decides), out=folder)
    res.metric("valid_accuracy", 0.8125)
    res.claim("pretrained <beats> random", effect=0.1, supported=True, unit="accuracy")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    res.figure(fig, "curve")
    res.save()


def test_report_has_every_lesson_claim_and_embedded_figure(tmp_path):
    _record(tmp_path, "00_start_here", decides=False)
    _record(tmp_path, "01_reuse", decides=True)
    page = write_report(tmp_path, tmp_path / "out" / "report.html").read_text()
    assert page.count("<h2>") == 2 and "00_start_here" in page and "01_reuse" in page
    assert "0.8125" in page and "pretrained &lt;beats&gt; random" in page      # values shown, text escaped
    assert "class='undecided'" in page and "class='supported'" in page
    assert page.count("data:image/png;base64,") == 2


def test_empty_results_folder_gives_a_page(tmp_path):
    page = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert "<h1>" in page and "<h2>" not in page

"""Tests for convtips_lib.core.results: claims and three-state verdicts, the JSON (+ PNG) lesson record, the ledger."""
import json
from importlib import metadata

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import numpy as np  # noqa: E402

import convtips_lib.core.store as results_mod  # noqa: E402
from convtips_lib.core.measure import Estimate  # noqa: E402
from convtips_lib.core.profiles import profile  # noqa: E402
from convtips_lib.core.results import (Results, describe, ledger, load_results, read_records,  # noqa: E402
                                       results_dir, verdict)


def _leftovers(folder):
    """Temporary files atomic_write may have left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_results_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVTIPS_RESULTS", raising=False)
    assert str(results_dir()) == "results"
    monkeypatch.setenv("CONVTIPS_RESULTS", str(tmp_path))
    assert results_dir() == tmp_path


# ---------------------------------------------------------------- claims and verdicts

@pytest.mark.parametrize("lo, hi, predicts, threshold, want", [
    (0.01, 0.05, "greater", 0.0, "supported"),
    (-0.05, -0.01, "greater", 0.0, "refuted"),
    (-0.01, 0.05, "greater", 0.0, "inconclusive"),
    (0.005, 0.05, "greater", 0.01, "inconclusive"),     # 'at least one point' not shown
    (0.02, 0.05, "greater", 0.01, "supported"),
    (-0.003, 0.008, "greater", 0.01, "refuted"),        # wholly below the practical threshold
    (-0.05, -0.01, "less", 0.0, "supported"),
    (0.01, 0.05, "less", 0.0, "refuted"),
    (-0.01, 0.01, "within", 0.02, "supported"),
    (0.03, 0.05, "within", 0.02, "refuted"),
    (0.01, 0.03, "within", 0.02, "inconclusive"),
    (0.0, 0.0, "greater", 0.0, "inconclusive"),          # zero width exactly at the threshold
    (float("nan"), 0.1, "greater", 0.0, "inconclusive"),
])
def test_verdict_from_the_interval(lo, hi, predicts, threshold, want):
    assert verdict(lo, hi, predicts, threshold) == want


def test_bad_prediction_kind_lists_the_choices():
    with pytest.raises(ValueError, match="greater, less, within"):
        verdict(0, 1, "bigger")


def test_claim_undecided_on_smoke(tmp_path):
    cfg = profile("smoke")
    assert cfg.decides_claims is False
    row = Results("01_test", cfg, out=tmp_path).claim("augmentation helps", Estimate(0.03, 0.01, 0.05, "accuracy"))
    assert row["verdict"] == "undecided" and "CONVTIPS_PROFILE" in row["note"]
    assert row["effect"] == pytest.approx(0.03) and row["ci"] == [0.01, 0.05] and row["unit"] == "accuracy"


def test_claim_decided_on_cpu_from_its_interval(tmp_path):
    r = Results("01_test", profile("cpu"), out=tmp_path)
    assert r.claim("bigger images help", Estimate(0.05, 0.02, 0.08))["verdict"] == "supported"
    assert r.claim("dropout helps", Estimate(0.02, -0.01, 0.05))["verdict"] == "inconclusive"   # effect > 0 is not enough
    assert r.claim("noise helps", Estimate(-0.02, -0.04, -0.01))["verdict"] == "refuted"


def test_claim_explicit_decidable_overrides_profile(tmp_path):
    est = Estimate(1.0, 1.0, 1.0, method="exact (a check)")
    assert Results("01_test", profile("smoke"), out=tmp_path).claim("forced", est, threshold=0.5,
                                                                      decidable=True)["verdict"] == "supported"
    assert Results("01_test", profile("cpu"), out=tmp_path).claim("forced", est, decidable=False)["verdict"] == "undecided"


def test_reclaim_replaces_row(tmp_path):
    r = Results("01_test", profile("cpu"), out=tmp_path)
    r.claim("A", Estimate(0.1, 0.05, 0.15))
    r.claim("B", Estimate(0.2, 0.1, 0.3))
    r.claim("A", Estimate(-0.3, -0.4, -0.2))
    claims = r.data["claims"]
    assert [c["claim"] for c in claims] == ["B", "A"]
    assert claims[1]["effect"] == pytest.approx(-0.3) and claims[1]["verdict"] == "refuted"
    assert list(r.claims().columns) == ["claim", "effect", "ci_low", "ci_high", "unit", "verdict"]


def test_describe_states_effect_interval_and_verdict(tmp_path):
    r = Results("01_test", profile("cpu"), out=tmp_path)
    row = r.claim("x", Estimate(0.084, 0.051, 0.118, "balanced accuracy", "paired bootstrap"))
    assert describe(row) == "+0.084 balanced accuracy, 95 % CI [+0.051, +0.118]: supported"
    row = r.claim("y", Estimate(1.0, 1.0, 1.0, "refused", "exact (a check)"), threshold=0.5)
    assert describe(row) == "+1.000 refused, exact: supported"


def test_nan_is_written_as_null(tmp_path):
    r = Results("01_test", profile("cpu"), out=tmp_path)
    r.metric("broken", float("nan"))
    r.claim("no interval", Estimate(2.0, float("nan"), float("nan")))
    data = json.loads(r.save().read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert data["metrics"]["broken"] is None and data["claims"][0]["ci"] == [None, None]
    assert data["claims"][0]["verdict"] == "inconclusive"
    assert "NaN" in data["null_means"]   # the record says what a null stands for


def test_table_leaves_out_per_image_columns(tmp_path):
    r = Results("01_test", profile("cpu"), out=tmp_path)
    r.table("runs", pd.DataFrame(dict(regime=["a"], accuracy=[0.8], y_pred=[np.array([0, 1])])))
    assert r.data["tables"]["runs"] == [{"regime": "a", "accuracy": 0.8}]


def test_ledger_of_two_records(tmp_path):
    for lesson, eff in (("00_a", 0.1), ("01_b", -0.2)):
        r = Results(lesson, profile("cpu"), out=tmp_path)
        r.claim(f"claim of {lesson}", Estimate(eff, eff - 0.05, eff + 0.05))
        r.save()
    table = ledger(load_results(tmp_path))
    assert list(table["lesson"]) == ["00_a", "01_b"] and list(table["verdict"]) == ["supported", "refuted"]
    assert set(table["profile"]) == {"cpu"}


def test_ledger_keeps_a_claim_without_interval_numeric(tmp_path):
    r = Results("00_a", profile("cpu"), out=tmp_path)
    r.claim("one timing", Estimate(2.0, float("nan"), float("nan")))   # saved as null, read back as None
    r.save()
    table = ledger(load_results(tmp_path))
    assert all(table[c].dtype == float for c in ("effect", "ci_low", "ci_high"))
    assert table["ci_low"].isna().all() and table["effect"].iloc[0] == 2.0


def test_load_results_skips_a_foreign_or_broken_file_with_a_warning(tmp_path):
    Results("00_a", profile("cpu"), out=tmp_path).save()
    (tmp_path / "zz_broken.json").write_text('{"lesson": ')
    (tmp_path / "package.json").write_text('{"name": "x"}')
    with pytest.warns(UserWarning) as rec:
        records = load_results(tmp_path)
    named = [[f for f in ("package.json", "zz_broken.json") if f in str(w.message)] for w in rec]
    assert sorted(named) == [["package.json"], ["zz_broken.json"]]       # one warning per skipped file
    assert [r["lesson"] for r in records] == ["00_a"]
    assert len(read_records(tmp_path)[1]) == 2


def test_seed_defaults_to_profile_and_can_be_overridden(tmp_path):
    cfg = profile("smoke")
    assert Results("x", cfg, out=tmp_path).data["seed"] == cfg.seed
    assert Results("x", cfg, seed=7, out=tmp_path).data["seed"] == 7


# ---------------------------------------------------------------- metric / table / figure / save / load

@pytest.fixture
def saved(tmp_path):
    cfg = profile("smoke")
    r = Results("02_lesson", cfg, out=tmp_path)
    r.metric("accuracy", 0.875)
    r.metric("tensor_value", torch.tensor(0.25))      # numbers from torch are stored as plain numbers
    r.metric("per_class", {"functional": 0.9, "defective": 0.5})
    r.table("grid", pd.DataFrame({"lr": [1e-3, 1e-2], "acc": [0.8, 0.85]}))
    r.claim("something", Estimate(0.1, 0.05, 0.15))
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    png = r.figure(fig, "curve")
    r.figure(fig, "curve")                               # saving again does not list it twice
    plt.close(fig)
    path = r.save()
    return r, path, png, tmp_path


def test_save_writes_json_and_png(saved):
    r, path, png, out = saved
    assert path == out / "02_lesson.json"
    assert png == out / "02_lesson_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["02_lesson.json", "02_lesson_curve.png"]


def test_json_contents(saved):
    r, path, png, out = saved
    data = json.loads(path.read_text())
    assert data["lesson"] == "02_lesson"
    cfg = profile("smoke")
    assert data["profile"] == json.loads(json.dumps(cfg.as_dict())) and data["profile"]["name"] == "smoke"
    assert data["seed"] == cfg.seed
    env = data["environment"]
    assert env["profile"] == "smoke"
    assert env["torch"] == metadata.version("torch")
    assert env["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "device" in env and "cpu_threads" in env
    assert data["metrics"]["accuracy"] == pytest.approx(0.875)
    assert data["metrics"]["tensor_value"] == pytest.approx(0.25)
    assert data["metrics"]["per_class"] == {"functional": 0.9, "defective": 0.5}
    assert data["tables"]["grid"] == [{"lr": 1e-3, "acc": 0.8}, {"lr": 1e-2, "acc": 0.85}]
    assert data["figures"] == ["02_lesson_curve.png"]
    assert [c["claim"] for c in data["claims"]] == ["something"]
    assert "saved_at" in data


def test_load_results_reads_back(saved):
    r, path, png, out = saved
    r2 = Results("01_other", profile("cpu"), out=out)
    r2.metric("n", 3)
    r2.save()
    loaded = load_results(out)
    assert [d["lesson"] for d in loaded] == ["01_other", "02_lesson"]
    assert loaded[1]["metrics"]["accuracy"] == pytest.approx(0.875)
    assert loaded[0]["profile"]["name"] == "cpu"


def test_load_results_uses_env_folder(saved, monkeypatch):
    r, path, png, out = saved
    monkeypatch.setenv("CONVTIPS_RESULTS", str(out))
    assert [d["lesson"] for d in load_results()] == ["02_lesson"]


def test_save_twice_overwrites_and_leaves_no_temp(saved):
    r, path, png, out = saved
    r.metric("accuracy", 0.5)
    r.save()
    assert json.loads(path.read_text())["metrics"]["accuracy"] == 0.5
    assert _leftovers(out) == []


def test_save_failure_keeps_previous_record(saved, monkeypatch):
    r, path, png, out = saved
    before = path.read_text()
    r.metric("accuracy", 0.1)
    monkeypatch.setattr(results_mod.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        r.save()
    assert path.read_text() == before
    assert _leftovers(out) == []


def test_a_claim_records_what_its_experiment_could_detect():
    res = Results("00_test", profile("cpu"))
    row = res.claim("B beats A", Estimate(0.01, -0.02, 0.04, "balanced accuracy", "paired bootstrap"))
    assert row["half_width"] == pytest.approx(0.03) and row["detectable"] == pytest.approx(0.03)
    assert row["verdict"] == "inconclusive" and describe(row).endswith("this run cannot see effects below 0.030")
    exact = res.claim("exact", Estimate(1.0, 1.0, 1.0, "x", "exact"))
    assert exact["half_width"] == 0 and "cannot see" not in describe(exact)


def test_says_picks_the_sentence_of_the_verdict():
    from convtips_lib.core.results import says
    res = Results("00_test", profile("cpu"))
    sentences = dict(supported="It held.", refuted="It failed.", inconclusive="Cannot tell.")
    up = res.claim("up", Estimate(0.05, 0.02, 0.08, "m", "paired bootstrap"))
    down = res.claim("down", Estimate(-0.05, -0.08, -0.02, "m", "paired bootstrap"))
    flat = res.claim("flat", Estimate(0.0, -0.02, 0.02, "m", "paired bootstrap"))
    assert says(up, **sentences) == "It held." and says(down, **sentences) == "It failed."
    assert says(flat, **sentences).startswith("Cannot tell. (This run cannot see effects below 0.020")
    assert says(flat, **sentences, detectable=False) == "Cannot tell."   # after describe(row), which says it
    smoke = Results("00_test", profile("smoke")).claim("up", Estimate(0.05, 0.02, 0.08, "m", "paired bootstrap"))
    assert says(smoke, **sentences).startswith("Not decided: this profile is too small")
    assert "+0.050" in says(smoke, **sentences) and "+0.050" not in says(smoke, **sentences, detectable=False)
    assert says(smoke, **sentences, undecided="Smoke.") == "Smoke."


def test_the_closing_cell_groups_claims_by_verdict_and_says_what_would_settle_the_rest():
    from convtips_lib.core.results import settle_factor
    res = Results("00_test", profile("cpu"))
    res.claim("up", Estimate(0.05, 0.02, 0.08, "m", "paired bootstrap"))
    flat = res.claim("flat", Estimate(0.01, -0.02, 0.04, "m", "paired bootstrap"))
    zero = res.claim("zero", Estimate(0.0, -0.02, 0.02, "m", "paired bootstrap"))
    assert settle_factor(flat) == pytest.approx(9.0) and settle_factor(zero) is None
    text = res.showed(why={"up": dict(supported="Because of X.", refuted="Not X.")})
    assert text.index("**Held** (1)") < text.index("**Not decided by this run** (2)")
    assert "- up: +0.050 m, 95 % CI [+0.020, +0.080]: supported. Because of X." in text and "Not X." not in text
    assert "About 9x this run's predictions would settle" in text and "no affordable run" in text
    res.claim("unbounded", Estimate(0.1, float("nan"), float("nan"), "m", "paired bootstrap"))
    assert "- unbounded: " in res.showed() and "Its interval is not finite" in res.showed()
    with pytest.raises(ValueError, match="did not record"):
        res.showed(why={"nope": {}})
    smoke = Results("00_test", profile("smoke"))
    smoke.claim("up", Estimate(0.05, 0.02, 0.08, "m", "paired bootstrap"))
    assert "Not decided in this profile" in smoke.showed() and "CONVTIPS_PROFILE=cpu" in smoke.showed()


def test_each_claim_says_what_kind_of_thing_it_measures():
    res = Results("00_test", profile("cpu"))
    assert res.claim("a", Estimate(0.02, 0.01, 0.03, "balanced_accuracy", "paired bootstrap"))["kind"] == "training effect"
    assert res.claim("b", Estimate(0.02, 0.01, 0.03, "m", "paired bootstrap"),
                     unit="minority recall, remedy minus plain")["kind"] == "training effect"
    assert res.claim("c", Estimate(3.0, 2.0, 4.0, "x faster per batch (CPU)", "ratio of medians"))["kind"] == "speed"
    assert res.claim("d", Estimate(1.0, 1.0, 1.0, "refused (1 = yes)", "exact (one load)"))["kind"] == "mechanism"
    assert res.claim("e", Estimate(0.3, 0.1, 0.5, "Spearman difference", "paired bootstrap"))["kind"] == "other"


def test_a_within_m_claim_records_m_and_whether_the_run_could_resolve_it():
    res = Results("00_test", profile("cpu"))
    wide = res.claim("same", Estimate(0.0, -0.03, 0.03, "m", "paired bootstrap"), predicts="within", threshold=0.02)
    assert wide["margin"] == 0.02 and wide["margin_resolvable"] is False
    assert "wider than the claim's margin of 0.020, so it could not have been supported" in describe(wide)
    narrow = res.claim("same2", Estimate(0.0, -0.01, 0.01, "m", "paired bootstrap"), predicts="within", threshold=0.02)
    assert narrow["margin_resolvable"] is True and narrow["verdict"] == "supported"
    worse = res.claim("no worse", Estimate(0.0, -0.03, 0.03, "m", "paired bootstrap"), threshold=-0.01)
    assert worse["margin"] == 0.01 and worse["margin_resolvable"] is False
    assert res.claim("up", Estimate(0.05, 0.02, 0.08, "m", "paired bootstrap"))["margin"] is None

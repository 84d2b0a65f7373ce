"""Tests for convtips_lib.results: atomic writes, claims and verdicts, the JSON (+ PNG) lesson record."""
import json
import os
from importlib import metadata

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from convtips_lib import results as results_mod  # noqa: E402
from convtips_lib.profiles import profile  # noqa: E402
from convtips_lib.results import Results, atomic_write, load_results, results_dir  # noqa: E402


def _leftovers(folder):
    """Temporary files atomic_write may have left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- atomic_write

def test_atomic_write_text(tmp_path):
    path = atomic_write(tmp_path / "a.json", '{"x": 1}')
    assert path == tmp_path / "a.json"
    assert path.read_text() == '{"x": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_bytes_and_creates_folder(tmp_path):
    path = atomic_write(tmp_path / "sub" / "deeper" / "b.bin", b"\x00\x01\xff")
    assert path.read_bytes() == b"\x00\x01\xff"
    assert _leftovers(path.parent) == []


def test_atomic_write_overwrites(tmp_path):
    atomic_write(tmp_path / "c.txt", "old")
    atomic_write(tmp_path / "c.txt", "new")
    assert (tmp_path / "c.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "d.json"
    target.write_text("old content")

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write(target, "new content that never lands")
    assert target.read_text() == "old content"
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_atomic_write_failure_without_old_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "e.json", "x")
    assert list(tmp_path.iterdir()) == []


def test_results_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVTIPS_RESULTS", raising=False)
    assert str(results_dir()) == "results"
    monkeypatch.setenv("CONVTIPS_RESULTS", str(tmp_path))
    assert results_dir() == tmp_path


# ---------------------------------------------------------------- claims

def test_claim_undecided_on_smoke(tmp_path):
    cfg = profile("smoke")
    assert cfg.decides_claims is False
    r = Results("01_test", cfg, out=tmp_path)
    row = r.claim("augmentation helps", 0.03, True, unit="accuracy")
    assert row["supported"] is None
    assert row["verdict"].startswith("undecided")
    assert row["effect"] == pytest.approx(0.03)
    assert row["unit"] == "accuracy"
    row = r.claim("smaller lr helps", -0.01, False)
    assert row["supported"] is None and row["verdict"].startswith("undecided")


def test_claim_decided_on_cpu(tmp_path):
    r = Results("01_test", profile("cpu"), out=tmp_path)
    yes = r.claim("bigger images help", 0.05, True)
    no = r.claim("dropout helps", -0.02, False)
    assert yes["supported"] is True and yes["verdict"] == "supported"
    assert no["supported"] is False and no["verdict"] == "not supported"


def test_claim_explicit_decidable_overrides_profile(tmp_path):
    r = Results("01_test", profile("smoke"), out=tmp_path)
    assert r.claim("forced", 1.0, True, decidable=True)["verdict"] == "supported"
    r2 = Results("01_test", profile("cpu"), out=tmp_path)
    assert r2.claim("forced", 1.0, True, decidable=False)["supported"] is None


def test_reclaim_replaces_row(tmp_path):
    r = Results("01_test", profile("cpu"), out=tmp_path)
    r.claim("A", 0.1, True)
    r.claim("B", 0.2, True)
    r.claim("A", -0.3, False)
    claims = r.data["claims"]
    assert [c["claim"] for c in claims].count("A") == 1
    assert len(claims) == 2
    a = next(c for c in claims if c["claim"] == "A")
    assert a["effect"] == pytest.approx(-0.3) and a["verdict"] == "not supported"


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
    r.claim("something", 0.1, True)
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
    assert data["profile"]["name"] == "smoke"
    assert data["profile"]["img_size"] == 64
    assert data["seed"] == 42
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


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644

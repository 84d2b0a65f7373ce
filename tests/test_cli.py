"""Tests for convtips_lib.course.cli: `convtips run` on tiny generated lessons (one records a claim, one raises, one
sleeps): failures and timeouts named by cell, Ctrl-C, run.json, stale and foreign records, clear errors, --seed,
and `convtips claims`."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from convtips_lib.core.measure import Estimate
from convtips_lib.core.profiles import profile
from convtips_lib.core.results import Results
from convtips_lib.course.cli import find_lessons, main

CLAIM = """import os
from convtips_lib.core.measure import Estimate
from convtips_lib.core.profiles import profile
from convtips_lib.core.results import Results
cfg = profile()
res = Results('00_claim', cfg)
res.metric('seed_env', os.environ.get('CONVTIPS_SEED'))
res.claim('tiny lessons <run> fast', Estimate(0.1, 0.05, 0.15, 'accuracy', 'test'), decidable=True)
res.save()"""
RAISES = "def check(v):\n    raise ValueError(f'bad value {v}')\n\ncheck(x)"
SLEEPS = "import os, time\nopen(os.environ['TINY_PID_FILE'], 'w').write(str(os.getpid()))\n" \
         "time.sleep(float(os.environ.get('TINY_SLEEP', '0')))"


def _notebook(path, *codes):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in codes])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _run(*argv) -> tuple:
    """main(argv) with its stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(map(str, argv)))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def lessons(tmp_path):
    folder = tmp_path / "lessons"
    folder.mkdir()
    _notebook(folder / "00_tiny.ipynb", "x = 1")
    _notebook(folder / "01_broken.ipynb", "raise RuntimeError('this lesson fails')")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of three lessons (claim, broken, ok) into a folder holding a stale, a corrupt and a foreign record."""
    tmp = tmp_path_factory.mktemp("run")
    folder, out = tmp / "lessons", tmp / "out"
    folder.mkdir()
    _notebook(folder / "00_claim.ipynb", CLAIM)
    _notebook(folder / "01_broken.ipynb", "x = 1", RAISES)
    _notebook(folder / "02_ok.ipynb", "print('hi')")
    results = out / "results"
    results.mkdir(parents=True)
    stale = Results("01_broken", profile("smoke"), out=results)
    stale.metric("stale_number", 0.987654)
    stale.save()
    (results / "01_broken_curve.png").write_bytes(b"old figure")
    (results / "zz_half.json").write_text('{"lesson": "zz\x01')
    (results / "yy_foreign.json").write_text('{"name": "some other tool"}')
    rc, stdout, stderr = _run("run", "--profile", "smoke", "--out", out, "--lessons-dir", folder, "--seed", 7)
    return dict(rc=rc, out=out, stdout=stdout, stderr=stderr, report=(out / "report.html").read_text())


def test_find_lessons_by_prefix_and_glob(lessons):
    assert [p.stem for p in find_lessons((), lessons)] == ["00_tiny", "01_broken"]
    assert [p.stem for p in find_lessons(("01*",), lessons)] == ["01_broken"]


def test_unknown_lesson_lists_the_choices(lessons):
    rc, _, err = _run("run", "07", "--lessons-dir", lessons)
    assert rc == 2 and "00_tiny, 01_broken" in err


def test_unknown_profile_is_a_one_line_error(lessons):
    rc, _, err = _run("run", "--profile", "huge", "--lessons-dir", lessons)
    assert rc == 2 and err.startswith("convtips: unknown profile 'huge'") and "smoke, cpu, gpu" in err
    assert "Traceback" not in err


def test_negative_seed_is_a_one_line_error(lessons):
    rc, _, err = _run("run", "--seed", "-3", "--lessons-dir", lessons)
    assert rc == 2 and "--seed must be an integer from 0" in err and "Traceback" not in err


def test_lessons_dir_errors_name_the_real_flag(tmp_path):
    rc, _, err = _run("run", "--lessons-dir", tmp_path / "missing")
    assert rc == 2 and "does not exist" in err and "--lessons-dir FOLDER" in err
    rc, _, err = _run("run", "--lessons-dir", tmp_path)
    assert rc == 2 and "no lessons" in err and "--lessons-dir FOLDER" in err and "--lessons " not in err


def test_out_as_a_file_is_a_clear_error(lessons, tmp_path):
    file = tmp_path / "report.txt"
    file.write_text("not a folder")
    rc, _, err = _run("run", "--profile", "smoke", "--out", file, "--lessons-dir", lessons)
    assert rc == 2 and "is a file, not a folder" in err and "Traceback" not in err
    rc, _, err = _run("run", "--profile", "smoke", "--out", file / "sub", "--lessons-dir", lessons)
    assert rc == 2 and "which is a file" in err


@pytest.mark.slow
def test_failed_lesson_names_cell_line_and_exception(run):
    assert run["rc"] == 1
    assert "01_broken  failed" in run["stdout"]
    assert "cell 2 of 2, line 2: raise ValueError(f'bad value {v}')" in run["stdout"]
    assert "ValueError: bad value 1" in run["stdout"] and "-----" not in run["stdout"]
    assert "00_claim  ok" in run["stdout"] and "02_ok  ok" in run["stdout"]
    assert "without encryption" not in run["stdout"] + run["stderr"]          # the kernel's chatter stays in logs/


@pytest.mark.slow
def test_run_json_lists_every_lesson_with_status_time_and_reason(run):
    rows = {r["lesson"]: r for r in json.loads((run["out"] / "run.json").read_text())}
    assert {k: r["status"] for k, r in rows.items()} == {"00_claim": "ok", "01_broken": "failed", "02_ok": "ok"}
    assert rows["01_broken"]["cell"] == 2 and rows["01_broken"]["error"] == "ValueError: bad value 1"
    assert all(r["seconds"] > 0 for r in rows.values())
    marked = nbformat.read(run["out"] / "01_broken.ipynb", as_version=4)
    assert marked.metadata["convtips"]["status"] == "failed" and "Incomplete: failed" in marked.cells[0].source


@pytest.mark.slow
def test_report_opens_with_the_ledger_and_lists_failed_lessons_with_the_reason(run):
    page = run["report"]
    assert page.index("Claims ledger") < page.index("Lessons in this run") < page.index("<h2 class='lesson'>")
    assert "<tr class='supported'><td>00_claim</td><td>tiny lessons &lt;run&gt; fast</td>" in page
    assert page.count("class='forest'") == 1
    assert "<td>01_broken</td><td>failed</td>" in page and "ValueError: bad value 1" in page


@pytest.mark.slow
def test_stale_record_and_figures_are_removed_before_a_lesson_runs(run):
    results = run["out"] / "results"
    assert not (results / "01_broken.json").exists() and not (results / "01_broken_curve.png").exists()
    assert "0.9877" not in run["report"]


@pytest.mark.slow
def test_corrupt_and_foreign_json_are_skipped_with_a_warning(run):
    assert "warning: skipped" in run["stderr"] and "zz_half.json: not valid JSON" in run["stderr"]
    assert "yy_foreign.json: not a lesson record" in run["stderr"]
    assert "Files skipped" in run["report"]


@pytest.mark.slow
def test_the_cell_timeout_defaults_to_the_profiles(run, lessons, tmp_path):
    assert "cell timeout 600 s" in run["stdout"]                                 # smoke
    rc, out, _ = _run("run", "00", "--profile", "cpu", "--out", tmp_path / "out", "--lessons-dir", lessons)
    assert rc == 0 and f"cell timeout {profile('cpu').cell_timeout} s" in out   # lesson 08's cpu cells take ~20 min
    assert profile("cpu").cell_timeout > 20 * 60 > profile("smoke").cell_timeout


@pytest.mark.slow
def test_seed_reaches_the_kernels(run):
    record = json.loads((run["out"] / "results" / "00_claim.json").read_text())
    assert record["metrics"]["seed_env"] == "7" and record["seed"] == 7


@pytest.mark.slow
def test_a_stalled_cell_times_out_naming_lesson_and_cell(tmp_path, monkeypatch):
    folder = tmp_path / "lessons"
    folder.mkdir()
    _notebook(folder / "00_stall.ipynb", "y = 2", "import time\ntime.sleep(60)")
    t = time.monotonic()
    rc, out, _ = _run("run", "--profile", "smoke", "--out", tmp_path / "out", "--lessons-dir", folder,
                      "--timeout", 5)
    assert rc == 1 and time.monotonic() - t < 40
    assert "00_stall  timed out" in out and "cell 2 of 2, line 2: time.sleep(60)" in out   # where it hung
    assert json.loads((tmp_path / "out" / "run.json").read_text())[0]["status"] == "timed out"


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\tZ" not in status.read_text()


@pytest.mark.slow
def test_ctrl_c_keeps_a_marked_partial_notebook_and_leaves_no_kernel(tmp_path, monkeypatch):
    folder, out, pid_file = tmp_path / "lessons", tmp_path / "out", tmp_path / "kernel.pid"
    folder.mkdir()
    _notebook(folder / "00_sleepy.ipynb", SLEEPS, "print('done')")
    env = dict(os.environ, TINY_SLEEP="120", TINY_PID_FILE=str(pid_file))
    cmd = [sys.executable, "-m", "convtips_lib.course.cli", "run", "--profile", "smoke", "--out", str(out),
           "--lessons-dir", str(folder)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    kernel = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted during lesson 00_sleepy, cell 1 of 2; partial notebook kept at" in stderr
    assert "marked incomplete" in stderr and "Traceback" not in stderr + stdout
    assert not _alive(kernel)
    partial = nbformat.read(out / "00_sleepy.ipynb", as_version=4)
    assert partial.metadata["convtips"]["status"] == "interrupted"
    assert "Incomplete: interrupted" in partial.cells[0].source and "line 3: time.sleep" in partial.cells[0].source
    monkeypatch.setenv("TINY_PID_FILE", str(pid_file))                  # a rerun into the same folder works
    monkeypatch.delenv("TINY_SLEEP", raising=False)
    rc, stdout, _ = _run("run", "--profile", "smoke", "--out", out, "--lessons-dir", folder)
    assert rc == 0 and "00_sleepy  ok" in stdout
    assert nbformat.read(out / "00_sleepy.ipynb", as_version=4).metadata["convtips"]["complete"]


def _record(folder, lesson, claim, low, high):
    res = Results(lesson, profile("smoke"), out=folder)
    res.claim(claim, Estimate((low + high) / 2, low, high, "accuracy", "paired bootstrap"), decidable=True)
    res.save()


def test_claims_prints_the_ledger_and_the_verdict_counts(tmp_path):
    _record(tmp_path / "results", "00_one", "pretrained weights beat random initialisation on every split we "
            "tried, by a margin that is larger than the noise band", 0.02, 0.08)
    _record(tmp_path / "results", "01_two", "freezing the body is as good as fine-tuning it", -0.04, 0.01)
    rc, out, _ = _run("claims", tmp_path)
    assert rc == 0
    assert "00_one" in out and "pretrained weights beat random" in out and "01_two" in out
    assert "[+0.020, +0.080]" in out and "supported" in out and "inconclusive" in out
    assert out.strip().endswith("2 claims: 1 supported, 0 refuted, 1 inconclusive, 0 undecided")


def test_claims_on_a_folder_without_results_says_so(tmp_path):
    rc, _, err = _run("claims", tmp_path)
    assert rc == 2 and "no lesson results" in err
    rc, _, err = _run("claims", tmp_path / "nowhere")
    assert rc == 2 and "does not exist" in err


def test_info_prints_profile_and_verified_weights():
    rc, out, _ = _run("info", "--profile", "smoke")
    assert rc == 0 and '"profile": "smoke"' in out and "2624 images" in out
    assert out.count("sha256 verified") == 3


# ---------------------------------------------------------------- convtips train / predict (lesson 08)
@pytest.mark.slow
def test_train_then_predict_end_to_end_on_a_tiny_folder(tmp_path, capsys, image_folder):
    from convtips_lib.topics.recipe import Recipe
    data = image_folder(tmp_path / "data")
    recipe = Recipe(bs=4, freeze_epochs=1).save(tmp_path / "recipe.json")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--recipe", str(recipe), "--img-size", "32",
                 "--epochs", "1", "--profile", "smoke"]) == 0
    said = capsys.readouterr().out
    assert "balanced accuracy" in said and str(out / "report.html") in said
    model = out / "model"
    assert {p.name for p in model.iterdir()} >= {"weights.pth", "model.json", "recipe.json"}
    assert Recipe.load(model / "recipe.json") == Recipe(bs=4, freeze_epochs=1, img_size=32, epochs=1)
    html = (out / "report.html").read_text()
    assert "train" in html and "<img" in html and "balanced_accuracy" in html
    metrics = json.loads((out / "results" / "train.json").read_text())["metrics"]
    chosen = metrics["chosen_on_tune"]   # the epoch is chosen on training images held out, not on the reported ones
    assert 2 <= chosen["tune_images"] < 12 and 1 <= chosen["kept_epoch"] <= 2 and metrics["validation"]["images"] == 4
    assert metrics["baseline"]["model"].startswith("RBF SVM") and metrics["held_out"]["images"] == 4
    assert set(metrics["held_out"]) == {"images", "network", "baseline", "network_minus_baseline"}
    probs = [m["probability"] for m in metrics["confident_mistakes"]]
    assert probs == sorted(probs, reverse=True) and "Most confident mistakes" in html
    image = next((data / "dark").glob("*.png"))
    assert main(["predict", str(model), str(image)]) == 0
    assert capsys.readouterr().out.split("\t")[1] in ("bright", "dark")


@pytest.mark.slow
def test_train_distributed_in_one_process_writes_the_model(tmp_path, capsys, image_folder):
    pytest.importorskip("accelerate")
    from convtips_lib.topics.recipe import Recipe
    data, out = image_folder(tmp_path / "data"), tmp_path / "run"
    recipe = Recipe(bs=4, img_size=32, epochs=1).save(tmp_path / "recipe.json")
    assert main(["train", str(data), "--out", str(out), "--recipe", str(recipe), "--profile", "smoke",
                 "--distributed", "--balance", "oversample"]) == 0
    assert (out / "model" / "weights.pth").is_file() and (out / "report.html").is_file()
    assert Recipe.load(out / "model" / "recipe.json").balance == "oversample"


def test_train_refuses_a_missing_folder_and_a_bad_valid_pct(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--valid-pct", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "--valid-pct" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--balance", "smote", "--out", str(tmp_path / "o")]) == 2
    assert "recipe balance 'smote' is unknown: choose one of none, oversample" in capsys.readouterr().err


# ---------------------------------------------------------------- convtips train: the recipe adapted to the folder
def _train_args(*argv):
    from convtips_lib.course.cli import _parser
    return _parser().parse_args(["train", *argv])


def test_train_defaults_to_a_step_budget_lr_find_rotations_without_flips_and_the_images_size(tmp_path, image_folder):
    from convtips_lib.course.cli import _train_recipe
    from convtips_lib.course.train_job import STEPS
    data = str(image_folder(tmp_path / "data"))                         # 40 x 30 px images
    recipe, notes = _train_recipe(_train_args(data))
    assert recipe.policy == "rotation" and recipe.steps == STEPS and recipe.find_lr and recipe.img_size == 64
    assert "64 px" in notes["img_size"]
    assert _train_recipe(_train_args(data, "--flips"))[0].policy == "flips+rotation"
    assert _train_recipe(_train_args(data, "--epochs", "3"))[0].steps is None
    assert _train_recipe(_train_args(data, "--epochs", "3"))[0].epochs == 3
    assert _train_recipe(_train_args(data, "--steps", "40"))[0].steps == 40
    fixed = _train_recipe(_train_args(data, "--lr", "0.01", "--img-size", "96"))
    assert fixed[0].lr == 0.01 and not fixed[0].find_lr and fixed[0].img_size == 96 and fixed[1] == {}


def test_a_recipe_file_keeps_its_flips_unless_no_flips_is_given(tmp_path, image_folder):
    from convtips_lib.course.cli import _train_recipe
    from convtips_lib.topics.recipe import Recipe
    data, path = str(image_folder(tmp_path / "data")), str(Recipe().save(tmp_path / "r.json"))
    assert _train_recipe(_train_args(data, "--recipe", path))[0] == Recipe()    # the file, as written
    assert _train_recipe(_train_args(data, "--recipe", path, "--no-flips"))[0].policy == "rotation"


def test_train_refuses_steps_and_epochs_together_and_a_bad_lr(tmp_path, capsys, image_folder):
    data = str(image_folder(tmp_path / "data"))
    assert main(["train", data, "--steps", "10", "--epochs", "2", "--out", str(tmp_path / "o")]) == 2
    assert "both say how long to train: give one" in capsys.readouterr().err
    assert main(["train", data, "--steps", "0", "--out", str(tmp_path / "o")]) == 2
    assert "recipe steps must be a whole number from 1" in capsys.readouterr().err
    assert main(["train", data, "--lr", "3", "--out", str(tmp_path / "o")]) == 2
    assert "recipe lr must be a number between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _train_record(folder: Path, mistakes: list) -> Path:
    from convtips_lib.core.results import Results
    ci = dict(value=0.9, low=0.8, high=0.95)
    res = Results("train", profile("smoke"), seed=0, out=folder)
    res.metric("held_out", dict(images=40, network=dict(accuracy=ci, balanced_accuracy=ci),
                                baseline=dict(accuracy=ci, balanced_accuracy=ci),
                                network_minus_baseline=dict(accuracy=dict(value=0.0, low=-0.1, high=0.1),
                                                            balanced_accuracy=dict(value=0.0, low=-0.1, high=0.1))))
    res.metric("baseline", dict(model="RBF SVM on 16 x 16 gray pixels", C=1.0))
    res.metric("chosen_on_tune", dict(kept_epoch=7, tune_images=30, steps=500, batches_per_epoch=8, epochs=62,
                                      epochs_why="a budget of 500 optimizer steps", img_size=64, img_size_why="64 px",
                                      lr=dict(used=0.005, why="lr_find suggested 0.005"),
                                      augmentation=dict(policy="none", why="no flips")))
    res.metric("confident_mistakes", mistakes)
    return res.save()


def test_the_train_report_shows_network_baseline_choices_and_mistakes_escaped(tmp_path):
    from convtips_lib.course.report import write_report
    mistakes = [dict(path="data/<script>alert(1)</script>/a&b.png", true="<b>six</b>", predicted="nine",
                     probability=0.97), dict(path="data/5/x.png", true="5", predicted="3", probability=0.6)]
    _train_record(tmp_path / "results", mistakes)
    html = write_report(tmp_path / "results", tmp_path / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;/a&amp;b.png" in html
    assert "&lt;b&gt;six&lt;/b&gt;" in html and html.index("a&amp;b.png") < html.index("data/5/x.png")
    assert "90.0 % [80.0, 95.0]" in html and "+0.0 points [-10.0, +10.0]" in html
    assert "RBF SVM on 16 x 16 gray pixels" in html and "lr_find suggested 0.005" in html
    assert "Most confident mistakes" in html and "What was chosen, and why" in html and "no flips" in html


# ---------------------------------------------------------------- convtips train: inputs checked before --out is touched

def _old_run(out: Path) -> Path:
    (out / "results").mkdir(parents=True)
    (out / "report.html").write_text("the previous report")
    return out / "report.html"


def test_train_keeps_the_previous_report_when_an_input_is_wrong(tmp_path, capsys, image_folder):
    report = _old_run(tmp_path / "run")
    assert main(["train", str(tmp_path / "dta"), "--out", str(tmp_path / "run")]) == 2
    assert "no folder" in capsys.readouterr().err and report.read_text() == "the previous report"
    data = image_folder(tmp_path / "data" / "train")
    image_folder(tmp_path / "data" / "valid", counts=(("bright", 2), ("dark", 2), ("grey", 2)))
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "'grey' have images in" in capsys.readouterr().err and report.read_text() == "the previous report"
    assert main(["train", str(data), "--img-size", "1", "--out", str(tmp_path / "run")]) == 2
    assert "img_size must be a whole number from 32" in capsys.readouterr().err


def test_train_refuses_a_recipe_file_with_a_wrong_type(tmp_path, capsys, image_folder):
    (tmp_path / "r.json").write_text('{"seed": "abc"}')
    assert main(["train", str(image_folder(tmp_path / "data")), "--recipe", str(tmp_path / "r.json"),
                 "--out", str(tmp_path / "run")]) == 2
    assert "recipe seed must be a whole number from 0 to 4,294,967,295" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_refuses_an_out_inside_the_data_folder_and_data_inside_what_it_writes(tmp_path, capsys, image_folder):
    data = image_folder(tmp_path / "data")
    assert main(["train", str(data), "--out", str(data / "results")]) == 2
    assert "lies inside the data folder" in capsys.readouterr().err and not (data / "results").exists()
    data = image_folder(tmp_path / "run" / "results" / "mine")
    assert main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    assert "which convtips train overwrites" in capsys.readouterr().err


def test_train_refuses_a_second_run_into_the_same_out_naming_the_lock(tmp_path, capsys, image_folder):
    from filelock import FileLock
    from convtips_lib.course.train_job import LOCK_FILE
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(out / LOCK_FILE, timeout=0):   # as a run in another process holds it
        assert main(["train", str(image_folder(tmp_path / "data")), "--out", str(out), "--profile", "smoke"]) == 2
    assert f"holds the lock file {out / LOCK_FILE}" in capsys.readouterr().err


def test_a_run_that_fails_keeps_the_old_report_and_removes_its_lock(tmp_path, monkeypatch, image_folder):
    from convtips_lib.course import train_job
    from convtips_lib.topics.recipe import Recipe

    def fails(*a, **k):
        assert (tmp_path / "run" / train_job.LOCK_FILE).exists()
        raise RuntimeError("out of memory")
    monkeypatch.setattr(train_job, "fit_recipe", fails)
    report = _old_run(tmp_path / "run")
    with pytest.raises(RuntimeError, match="out of memory"):
        train_job.train_folder(image_folder(tmp_path / "data"), Recipe(img_size=32, bs=4), profile("smoke"),
                               tmp_path / "run")
    assert report.read_text() == "the previous report" and not (tmp_path / "run" / train_job.LOCK_FILE).exists()


@pytest.mark.slow
def test_train_skips_bad_images_when_asked_counts_them_and_replaces_the_report(tmp_path, capsys, image_folder):
    data = image_folder(tmp_path / "data")
    (data / "dark" / "broken.png").write_bytes(b"not a png")
    report = _old_run(tmp_path / "run")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--img-size", "32", "--epochs", "1",
            "--profile", "smoke"]
    assert main(args) == 2 and "broken.png" in capsys.readouterr().err
    assert main(args + ["--skip-bad-images"]) == 0
    assert "skipped 1 unreadable image(s) (--skip-bad-images)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "results" / "train.json").read_text())["metrics"]
    assert metrics["skipped_images"] == [str(data / "dark" / "broken.png")]
    assert "broken.png" in report.read_text() and not (tmp_path / "run" / ".convtips-train.lock").exists()


# ---------------------------------------------------------------- errors: one line, a fix and an exit code
import errno  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402

import convtips_lib  # noqa: E402
from convtips_lib.course import cli  # noqa: E402

ERROR_CODES = {   # every error class of the library -> its exit code: 2 the input, 3 the machine
    "UsageError": 2, "ProfileError": 2, "ModelFolderError": 2, "UnknownModelError": 2, "WeightsChecksumError": 2,
    "WeightsFileError": 2, "NoTuneCells": 2, "BadImageError": 2, "DataFolderError": 2,
    "DataUnreachableError": 3, "HubUnreachableError": 3, "StorageError": 3,
}


def _library_errors() -> dict:
    """name -> class of every Exception subclass defined in convtips_lib (each module imported)."""
    for m in pkgutil.walk_packages(convtips_lib.__path__, "convtips_lib."):
        importlib.import_module(m.name)
    found, todo = {}, [Exception]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("convtips_lib.") and not issubclass(cls, Warning):
            found[cls.__name__] = cls
    return found


def _failing(monkeypatch, error: BaseException):
    """Make `convtips info` raise `error` from inside the command."""
    def cmd_info(args):
        raise error
    monkeypatch.setattr(cli, "cmd_info", cmd_info)


def test_every_library_error_class_has_an_exit_code():
    assert set(_library_errors()) == set(ERROR_CODES)   # a new error class: give it its code in ERROR_CODES


@pytest.mark.parametrize("name", sorted(ERROR_CODES))
def test_each_library_error_is_one_line_with_its_fix_and_exit_code(monkeypatch, name):
    _failing(monkeypatch, _library_errors()[name]("what went wrong: how to fix it"))
    rc, _, err = _run("info")
    assert rc == ERROR_CODES[name] and err.startswith("convtips: what went wrong: how to fix it")
    assert err.count("\n") == 1 and "Traceback" not in err and "--debug" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback_before_the_line(monkeypatch, where):
    from convtips_lib.course.runner import UsageError
    _failing(monkeypatch, UsageError("bad value: pass a good one"))
    rc, _, err = _run(*(["--debug", "info"] if where == "before" else ["info", "--debug"]))
    assert rc == 2 and err.startswith("Traceback") and "raise error" in err
    assert err.strip().splitlines()[-1] == "convtips: bad value: pass a good one"
    _failing(monkeypatch, RuntimeError("boom"))
    rc, _, err = _run("--debug", "info")
    assert rc == 1 and "Traceback" in err and err.strip().splitlines()[-1] == "convtips: unexpected RuntimeError: boom"


def test_an_unexpected_error_is_named_in_one_line_with_the_debug_hint(monkeypatch):
    _failing(monkeypatch, RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA"))
    rc, _, err = _run("info")
    assert rc == 1 and err == ("convtips: unexpected RuntimeError: CUDA error: device-side assert triggered Compile "
                               "with TORCH_USE_CUDA_DSA (run with --debug for the traceback)\n")


def test_a_value_error_from_outside_the_library_gets_the_debug_hint(monkeypatch):
    _failing(monkeypatch, ValueError("Expected more than 1 value per channel when training"))
    rc, _, err = _run("info")
    assert rc == 2 and err.startswith("convtips: unexpected ValueError: Expected more than 1 value")
    assert "--debug" in err


@pytest.mark.parametrize("code, words, fix", [(errno.EACCES, "permission denied", "check its permissions"),
                                              (errno.ENOSPC, "no space left on device", "free space"),
                                              (errno.EROFS, "read-only file system", "read-only")])
def test_an_os_error_names_the_path_and_the_fix(monkeypatch, code, words, fix):
    _failing(monkeypatch, OSError(code, os.strerror(code), "/data/out/model.pth"))
    rc, _, err = _run("info")
    assert rc == 3 and err.startswith(f"convtips: {words}: /data/out/model.pth: ") and fix in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_full_disk_during_the_write_itself_names_the_file(monkeypatch, tmp_path):
    import convtips_lib.core.store as store

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "out" / "run.json"
    monkeypatch.setattr(store.os, "fdopen", lambda fd, mode: (os.close(fd), Full())[1])
    monkeypatch.setattr(cli, "cmd_info", lambda args: store.atomic_write(target, "[]"))
    rc, _, err = _run("info")
    assert rc == 3 and err.startswith(f"convtips: cannot write {target}: No space left on device")
    assert "Free space" in err and err.count("\n") == 1 and not list(target.parent.iterdir())


def test_ctrl_c_is_a_short_line_and_exit_code_130(monkeypatch):
    _failing(monkeypatch, KeyboardInterrupt())
    assert _run("info")[::2] == (130, "convtips: interrupted (Ctrl-C)\n")


def test_an_error_from_a_dataloader_worker_shows_its_original_message(monkeypatch):
    from convtips_lib.core.data import BadImageError
    _failing(monkeypatch, BadImageError(
        "Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "worker.py", line 1, in fetch\nconvtips_lib.core.data.BadImageError: cannot read image a.png: '
        "truncated. Replace or delete the file\n"))
    rc, _, err = _run("info")
    assert (rc, err) == (2, "convtips: cannot read image a.png: truncated. Replace or delete the file\n")


def test_warnings_are_one_line_each(monkeypatch):
    import warnings

    def cmd_info(args):
        warnings.warn("12 training images, fewer than one batch of 32:\n using batches of 12")
        return 0
    monkeypatch.setattr(cli, "cmd_info", cmd_info)
    assert _run("info")[::2] == (0, "convtips: warning: 12 training images, fewer than one batch of 32: using "
                                    "batches of 12\n")


def test_train_offline_with_a_hub_architecture_says_which_arch_needs_no_download(tmp_path, monkeypatch, image_folder):
    import torchvision
    from urllib.error import URLError

    def offline(*a, **kw):
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    rc, _, err = _run("train", image_folder(tmp_path / "data"), "--arch", "tv:resnet18", "--out", tmp_path / "o",
                      "--profile", "smoke")
    line = err.strip().splitlines()[-1]
    assert rc == 3 and line.startswith("convtips: could not fetch pretrained weights for 'tv:resnet18'")
    assert "--arch efficientnet_lite0" in line and "Traceback" not in err


def test_run_refuses_to_write_into_the_lessons_folder(lessons):
    before = {p.name: p.read_bytes() for p in lessons.iterdir()}
    for out in (lessons, lessons / "runs"):
        rc, _, err = _run("run", "--profile", "smoke", "--out", out, "--lessons-dir", lessons)
        assert rc == 2 and "the lessons folder" in err and "Choose a folder outside it" in err
    assert {p.name: p.read_bytes() for p in lessons.iterdir()} == before    # nothing written, nothing overwritten

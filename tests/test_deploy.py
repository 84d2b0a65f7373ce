"""Tests for convtips_lib.topics.deploy: a model folder round-trips with identical predictions, tampered weights and
broken folders are refused with a clear error, and predictions on a mix of good and bad files name the bad ones and
classify the rest."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from convtips_lib.core.data import folder_dls
from convtips_lib.core.models import WeightsChecksumError, pretrained, sha256sum
from convtips_lib.core.profiles import profile
from convtips_lib.core.train import make_learner
from convtips_lib.topics.deploy import ModelFolderError, export_model, load_model, model_input, predict_files


@pytest.fixture(scope="module")
def exported(tmp_path_factory, image_folder):
    root = tmp_path_factory.mktemp("deploy")
    dls = folder_dls(image_folder(root / "data"), profile("smoke"), valid_pct=0.25, bs=4, img_size=32, seed=0)
    learn = make_learner(dls, "efficientnet_lite0", weights=None, seed=0)
    folder = export_model(learn, root / "model", "efficientnet_lite0", 32, resize="crop", metrics={"accuracy": 0.5})
    return learn, folder, root


def test_export_and_reload_give_identical_predictions(exported):
    learn, folder, _ = exported
    model, meta = load_model(folder)
    assert meta["vocab"] == ["bright", "dark"] and meta["img_size"] == 32 and meta["metrics"] == {"accuracy": 0.5}
    files = list(learn.dls.valid_ds.items)
    with learn.no_bar(), learn.no_logging():
        ref, _ = learn.get_preds(dl=learn.dls.test_dl(files))
    rows = predict_files(model, meta, files, bs=3)
    assert np.allclose(np.stack([r["probs"] for r in rows]), ref.numpy(), atol=1e-5)
    assert [r["label"] for r in rows] == [meta["vocab"][i] for i in ref.argmax(1)]
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))   # the faster layout for a Lite
    assert not model.training and conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_pruned_model_exports_and_reloads_with_identical_predictions(exported, tmp_path):
    from convtips_lib.topics.prune import make_pruner
    from convtips_lib.core.train import learner
    learn, _, _ = exported
    model = make_learner(learn.dls, "efficientnet_lite0", weights=None, seed=0).model
    make_pruner(model, 32, 0.3, 1).step()                  # torch-pruning narrows the layers in place
    folder = export_model(learner(learn.dls, model), tmp_path / "pruned", "efficientnet_lite0", 32)
    reloaded, meta = load_model(folder)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model.eval()(x), atol=1e-6)   # timm's same-padding and BN+act kept


def test_predict_names_bad_files_and_classifies_the_others(exported, tmp_path):
    _, folder, root = exported
    model, meta = load_model(folder)
    good = sorted((root / "data" / "dark").glob("*.png"))[0]
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    rows = predict_files(model, meta, [tmp_path / "missing.png", text, good, cut])
    assert [("error" in r) for r in rows] == [True, True, False, True]
    for r, name in zip(rows, ("missing.png", "notes.png", None, "cut.png")):
        if name:
            assert name in r["error"]
    assert rows[2]["label"] in meta["vocab"] and 0.5 <= rows[2]["probability"] <= 1


def test_tampered_weights_are_refused(exported, tmp_path):
    _, folder, _ = exported
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / "model.json").write_text((folder / "model.json").read_text())
    data = bytearray((folder / "weights.pth").read_bytes())
    data[-100] ^= 0xFF
    (copy / "weights.pth").write_bytes(bytes(data))
    with pytest.raises(WeightsChecksumError):
        load_model(copy)


def test_broken_model_folders_are_refused_with_what_to_do(exported, tmp_path):
    _, folder, _ = exported
    with pytest.raises(ModelFolderError, match="no model folder"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelFolderError, match="missing or unreadable"):
        load_model(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    del meta["vocab"]
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match="vocab"):
        load_model(tmp_path / "m")


def test_model_input_squash_resizes_the_whole_image_and_normalises(tmp_path):
    px = np.full((20, 40, 3), 255, np.uint8)
    px[:, :8] = 0                                            # a black stripe along the left edge
    Image.fromarray(px).save(tmp_path / "a.png")
    meta = dict(img_size=8, resize="squash", stats=dict(mean=[0.5] * 3, std=[0.5] * 3))
    x = model_input(tmp_path / "a.png", meta)
    assert x.shape == (3, 8, 8) and torch.allclose(x[:, :, 0], torch.tensor(-1.0))      # squashed: the stripe stays
    assert torch.allclose(x[:, :, -1], torch.tensor(1.0))
    crop = model_input(tmp_path / "a.png", dict(meta, resize="crop"))
    assert crop.shape == (3, 8, 8) and torch.allclose(crop, torch.tensor(1.0))         # centre crop: it is cut off


def test_model_folder_holds_the_record_and_the_reloaded_model_carries_it(exported):
    learn, folder, _ = exported
    meta = json.loads((folder / "model.json").read_text())
    assert (meta["img_size"], meta["resize"], meta["interpolation"]) == (32, "crop", "bilinear")
    assert meta["stats"] == dict(mean=list(learn.model.meta.mean), std=list(learn.model.meta.std))
    model, _ = load_model(folder)
    cfg = model.meta
    assert (cfg.arch, cfg.img_size, cfg.resize, cfg.interpolation, cfg.stats, cfg.sha256) == \
        ("efficientnet_lite0", 32, "crop", "bilinear", learn.model.meta.stats, meta["sha256"])
    assert str(folder) in cfg.source and cfg.timm_arch == "tf_efficientnet_lite0"


def test_model_input_reads_a_record_or_an_older_model_json(tmp_path):
    from convtips_lib.core.models import ModelCfg
    px = (np.random.default_rng(0).random((20, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(px).save(tmp_path / "a.png")
    old = dict(img_size=8, resize="squash", stats=dict(mean=[0.5] * 3, std=[0.5] * 3))   # no interpolation key
    want = torch.from_numpy(np.asarray(Image.fromarray(px).resize((8, 8), Image.BILINEAR), dtype=np.float32))
    assert torch.equal(model_input(tmp_path / "a.png", old), (want.permute(2, 0, 1) / 255 - 0.5) / 0.5)
    cfg = ModelCfg("x", 8, (0.5,) * 3, (0.5,) * 3, "bilinear", "squash")
    assert torch.equal(model_input(tmp_path / "a.png", cfg), model_input(tmp_path / "a.png", old))
    assert not torch.equal(model_input(tmp_path / "a.png", dict(old, interpolation="nearest")),
                           model_input(tmp_path / "a.png", old))


def test_convtips_predict_prints_each_image_and_names_the_bad_ones(exported, tmp_path, capsys):
    from convtips_lib.course.cli import main
    _, folder, root = exported
    good = sorted((root / "data" / "bright").glob("*.png"))[:2]
    assert main(["predict", str(folder), *map(str, good)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [str(p) for p in good]
    assert all(ln.split("\t")[1] in ("bright", "dark") and 0.5 <= float(ln.split("\t")[2]) <= 1 for ln in lines)
    assert main(["predict", str(folder), str(tmp_path / "gone.png"), str(good[0])]) == 1
    out = capsys.readouterr()
    assert "gone.png" in out.err and out.out.startswith(str(good[0]))
    assert main(["predict", str(tmp_path / "no_model"), str(good[0])]) == 2
    assert "no model folder" in capsys.readouterr().err


# ---------------------------------------------------------------- model.json checked against the network it describes

def _edited(folder, dest, weights=None, **fields):
    """A copy of the model folder `folder` at `dest`, its model.json's `fields` replaced; `weights`: a state dict
    written instead of the folder's weights.pth (its sha256 recorded)."""
    dest.mkdir()
    meta = json.loads((folder / "model.json").read_text())
    if weights is None:
        shutil.copy(folder / "weights.pth", dest / "weights.pth")
    else:
        torch.save(weights, dest / "weights.pth")
        meta["sha256"] = sha256sum(dest / "weights.pth")
    (dest / "model.json").write_text(json.dumps({**meta, **fields}))
    return dest


_STATS = dict(mean=[0.5] * 3, std=[0.5] * 3)
BAD_FIELDS = [("vocab", ["bright", "dark", "grey"], "vocab"),        # longer than the 2 outputs
              ("vocab", ["bright"], "vocab"),                         # shorter
              ("vocab", "bd", "vocab"),                               # a string, of 2 letters as the 2 outputs
              ("vocab", ["dark", "dark"], "vocab"),
              ("vocab", ["bright", 2], "vocab"),
              ("img_size", 0, "img_size"), ("img_size", "32", "img_size"), ("img_size", 32.5, "img_size"),
              ("img_size", True, "img_size"), ("img_size", 10 ** 6, "img_size"),
              ("stats", dict(_STATS, mean=[0.5]), "stats.mean"),
              ("stats", dict(_STATS, std=[0, 0, 0]), "stats.std"),
              ("stats", dict(_STATS, std=[0.5, "x", 0.5]), "stats.std"),
              ("stats", dict(_STATS, std=[0.5, float("inf"), 0.5]), "stats.std"),
              ("stats", [0.5, 0.5], "stats"),
              ("resize", "stretch", "resize"), ("interpolation", "cubic", "interpolation"),
              ("arch", "", "arch"), ("arch", ["efficientnet_lite0"], "arch"), ("sha256", 12, "sha256")]


@pytest.mark.parametrize("field, value, name", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_a_bad_model_json_field_is_named_with_its_value_and_the_fix(exported, tmp_path, field, value, name):
    _, folder, _ = exported
    bad = _edited(folder, tmp_path / "m", **{field: value})
    with pytest.raises(ModelFolderError) as e:
        load_model(bad)
    msg = str(e.value)
    assert f"{name} is " in msg and "must be" in msg and "convtips train" in msg and "model.json" in msg, msg
    assert str(bad / "model.json") in msg


def test_predict_refuses_a_vocab_the_network_has_no_outputs_for(exported, tmp_path, capsys):
    from convtips_lib.course.cli import main
    _, folder, root = exported
    good = sorted((root / "data" / "bright").glob("*.png"))[:2]
    for n, vocab in enumerate((["bright", "dark", "grey"], ["bright"])):
        bad = _edited(folder, tmp_path / f"m{n}", vocab=vocab)
        assert main(["predict", str(bad), *map(str, good)]) == 2
        out = capsys.readouterr()
        assert out.out == "" and f"vocab lists {len(vocab)}" in out.err and "it has 2 outputs" in out.err


def test_weights_of_another_network_are_explained_in_a_few_lines(exported, tmp_path):
    _, folder, _ = exported
    bad = _edited(folder, tmp_path / "m", weights=pretrained("resnet18", 2, weights=None).state_dict())
    with pytest.raises(ModelFolderError, match="do not fit a efficientnet_lite0.*missing keys") as e:
        load_model(bad)
    assert len(str(e.value)) < 700 and "convtips train" in str(e.value) and e.value.__cause__ is None


def test_a_folder_without_weights_or_with_nan_weights_is_refused(exported, tmp_path):
    learn, folder, _ = exported
    bare = _edited(folder, tmp_path / "bare")
    (bare / "weights.pth").unlink()
    with pytest.raises(ModelFolderError, match="weights.pth"):
        load_model(bare)
    sd = {k: v.clone() for k, v in learn.model.state_dict().items()}
    sd["head.1.bias"][0] = float("nan")
    with pytest.raises(ModelFolderError, match="NaN or infinite.*head.1.bias"):
        load_model(_edited(folder, tmp_path / "nan", weights=sd))


def test_predict_never_gives_nan_as_a_probability(exported):
    learn, folder, root = exported
    model, meta = load_model(folder)
    with torch.no_grad():
        model.head[1].bias[0] = float("nan")      # a network that diverged, handed to predict_files directly
    good = sorted((root / "data" / "dark").glob("*.png"))[:2]
    rows = predict_files(model, meta, good)
    assert all("probability" not in r and "not finite" in r["error"] for r in rows)


def test_predict_files_refuses_a_vocab_that_does_not_fit_the_model(exported):
    _, folder, root = exported
    model, meta = load_model(folder)
    good = sorted((root / "data" / "dark").glob("*.png"))[:1]
    with pytest.raises(ModelFolderError, match="must be 2 class names.*the vocab lists 3"):
        predict_files(model, dict(meta, vocab=["a", "b", "c"]), good)


def test_convtips_predict_keeps_the_good_images_among_corrupt_and_missing_ones(exported, tmp_path, capsys):
    from convtips_lib.course.cli import main
    _, folder, root = exported
    good = sorted((root / "data" / "bright").glob("*.png"))[:2]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:80] + bytes(200))
    files = [good[0], corrupt, tmp_path / "missing.jpg", good[1]]
    assert main(["predict", str(folder), *map(str, files)]) == 1
    out = capsys.readouterr()
    assert [ln.split("\t")[0] for ln in out.out.splitlines()] == [str(good[0]), str(good[1])]
    assert "nan" not in out.out.lower()
    assert "corrupt.png" in out.err and "missing.jpg" in out.err and "2 of 4" in out.err


def test_export_refuses_what_load_model_would_refuse(exported, tmp_path):
    from convtips_lib.core.train import learner
    learn, _, _ = exported
    for kw, name in ((dict(img_size=0), "img_size is 0"), (dict(img_size=32, interpolation="cubic"), "interpolation")):
        with pytest.raises(ModelFolderError, match=f"{name}.*Pass export_model"):
            export_model(learn, tmp_path / "m", "efficientnet_lite0", **kw)
    three = learner(learn.dls, pretrained("efficientnet_lite0", 3, weights=None))   # 3 outputs, 2 classes in dls
    with pytest.raises(ModelFolderError, match="vocab is \\['bright', 'dark'\\], but must be 3 class names"):
        export_model(three, tmp_path / "m", "efficientnet_lite0", 32)
    assert not (tmp_path / "m").exists()
    assert load_model(export_model(learn, tmp_path / "np", "efficientnet_lite0", np.int64(32)))[1]["img_size"] == 32

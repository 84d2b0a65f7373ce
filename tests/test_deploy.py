"""Tests for convtips_lib.topics.deploy: a model folder round-trips with identical predictions, tampered weights and
broken folders are refused with a clear error, and predictions on a mix of good and bad files name the bad ones and
classify the rest."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from convtips_lib.core.data import folder_dls
from convtips_lib.core.models import WeightsChecksumError
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

"""Tests for convtips_lib.core.models: offline weights, hub names, local weights, the Classifier."""
import socket
import time

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from skimage.data import chelsea

from convtips_lib.core.models import (MODEL_SOURCES, OFFLINE_WEIGHTS, Classifier, HubUnreachableError, ModelCfg,
                                 ModelSource, UnknownModelError, WeightsChecksumError, WeightsFileError,
                                 lite_keys_to_timm, list_archs, load_weights, model_stats, pretrained, reachable,
                                 sha256sum)
from convtips_lib.core.profiles import PROFILES

LITE0 = "efficientnet_lite0"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module", params=list(OFFLINE_WEIGHTS))
def offline_model(request):
    """(name, ImageNet classifier with the shipped weights), eval mode."""
    return request.param, pretrained(request.param).eval()


@pytest.fixture(scope="module")
def lite0_state_dict():
    w = OFFLINE_WEIGHTS[LITE0]
    return load_weights(w.path(), w.sha256)


@pytest.fixture(scope="module")
def imagenet_info():
    return timm.data.ImageNetInfo()


def _chelsea(size: int, stats) -> torch.Tensor:
    img = Image.fromarray(chelsea()).resize((size, size), Image.BILINEAR)
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = (torch.tensor(s)[:, None, None] for s in stats)
    return ((x - mean) / std)[None]


# ---------------------------------------------------------------- offline pretrained models

def test_offline_model_has_1000_outputs(offline_model):
    name, model = offline_model
    assert isinstance(model, Classifier)
    assert model.head[1].out_features == 1000
    assert model.meta["arch"] == name
    assert model.meta["sha256"] == OFFLINE_WEIGHTS[name].sha256


def test_offline_model_classifies_chelsea_as_cat(offline_model, imagenet_info):
    name, model = offline_model
    x = _chelsea(model.meta["input_size"], model.meta["stats"])
    assert x.shape[-1] == OFFLINE_WEIGHTS[name].input_size
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 1000)
    label = imagenet_info.index_to_description(int(logits.argmax()))
    assert "cat" in label, f"{name} top-1 is {label!r}"


@pytest.mark.parametrize("name", list(OFFLINE_WEIGHTS))
def test_offline_model_new_head_output_shape(name):
    model = pretrained(name, 2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2)


def test_new_head_keeps_pretrained_body(offline_model):
    name, model = offline_model
    new = pretrained(name, 2)
    a, b = model.body.state_dict(), new.body.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- lite_keys_to_timm / load_weights

def test_lite_keys_to_timm_maps_every_key(lite0_state_dict):
    model = timm.create_model(OFFLINE_WEIGHTS[LITE0].timm_arch, pretrained=False)
    out = lite_keys_to_timm(lite0_state_dict, model)
    assert out.keys() == model.state_dict().keys()


def test_lite_keys_to_timm_raises_on_missing_key(lite0_state_dict):
    model = timm.create_model(OFFLINE_WEIGHTS[LITE0].timm_arch, pretrained=False)
    sd = dict(lite0_state_dict)
    sd.pop(next(k for k in sd if k.startswith("_blocks.")))
    with pytest.raises(ValueError, match="do not fit"):
        lite_keys_to_timm(sd, model)


def test_lite_keys_to_timm_raises_on_wrong_architecture(lite0_state_dict):
    model = timm.create_model(OFFLINE_WEIGHTS["efficientnet_lite1"].timm_arch, pretrained=False)
    with pytest.raises((ValueError, IndexError)):
        lite_keys_to_timm(lite0_state_dict, model)


def test_load_weights_refuses_wrong_sha256():
    with pytest.raises(WeightsChecksumError, match="sha256"):
        load_weights(OFFLINE_WEIGHTS[LITE0].path(), "0" * 64)


def test_load_weights_accepts_right_sha256(lite0_state_dict):
    w = OFFLINE_WEIGHTS[LITE0]
    raw = torch.load(w.path(), map_location="cpu", weights_only=True)   # the file as torch reads it
    assert lite0_state_dict.keys() == raw.keys() and all(torch.equal(lite0_state_dict[k], raw[k]) for k in raw)
    body = pretrained(LITE0).body.state_dict()   # and these are the tensors the offline model is built from
    assert torch.equal(body["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(body["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])


def test_load_weights_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "absent.pth")


def test_shipped_weights_match_their_sha256():
    for w in OFFLINE_WEIGHTS.values():
        assert sha256sum(w.path()) == w.sha256


# ---------------------------------------------------------------- names and hubs

@pytest.mark.parametrize("name", ["no_such_model_xyz", "tv:no_such_model_xyz"])
def test_unknown_name_raises_listing_offline_models(name):
    with pytest.raises(UnknownModelError) as info:
        pretrained(name, 2, weights=None)
    assert LITE0 in str(info.value)
    assert name in str(info.value)


def test_hub_offline_raises_hub_unreachable_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE (and the cache folder) once, at import: patch the live values too,
    # else each weights file is retried for ~20 s before failing; an empty cache so a cached copy cannot answer
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError) as info:
        pretrained("resnet18", 2, weights="imagenet")
    assert time.perf_counter() - start < 15
    assert LITE0 in str(info.value)
    assert "resnet18" in str(info.value)


@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18"])
def test_random_init_hub_names_work(name):
    model = pretrained(name, 3, weights=None).eval()
    assert model.meta["source"] == "random init"
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)


def test_torchvision_name_keeps_1000_class_head():
    model = pretrained("tv:resnet18", weights=None)
    assert model.head[1].out_features == 1000
    assert model.meta["arch"] == "tv:resnet18"


# ---------------------------------------------------------------- local weights files

@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """(path, state dict) of a random timm resnet18 saved to disk."""
    torch.manual_seed(0)
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.save(sd, path)
    return path, sd


def test_local_weights_file_loads(resnet18_file):
    path, sd = resnet18_file
    model = pretrained("resnet18", 3, weights=path, sha256=sha256sum(path))
    body = model.body.state_dict()
    assert all(torch.equal(body[k], sd[k]) for k in body)
    assert model.meta["sha256"] == sha256sum(path)
    assert str(path) in model.meta["source"]
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_local_weights_file_keeps_its_head(resnet18_file):
    path, sd = resnet18_file
    model = pretrained("resnet18", weights=path)
    assert torch.equal(model.head[1].weight, sd["fc.weight"])


def test_local_weights_file_wrong_sha256_refused(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(WeightsChecksumError):
        pretrained("resnet18", 3, weights=path, sha256="f" * 64)


def test_local_torchvision_weights_file_loads(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    path = tmp_path / "tv_resnet18.pth"
    torch.save(sd, path)
    model = pretrained("tv:resnet18", 3, weights=path, sha256=sha256sum(path))
    assert torch.equal(model.body.conv1.weight, sd["conv1.weight"])


# ---------------------------------------------------------------- list_archs

def test_list_archs_torchvision_prefix():
    names = list_archs("resnet*", "torchvision")
    assert "tv:resnet18" in names
    assert all(n.startswith("tv:") for n in names)


def test_list_archs_offline_and_timm():
    assert list_archs("*", "offline") == list(OFFLINE_WEIGHTS)
    assert "resnet18" in list_archs("resnet1*", "timm")


def test_list_archs_bad_source():
    with pytest.raises(ValueError, match="torchvision"):
        list_archs("*", "keras")


def _vgg_is_slow(names) -> list:
    """vgg16 (138 M parameters) takes seconds to build: marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n == "vgg16" else n for n in names]


@pytest.mark.parametrize("name", _vgg_is_slow(["resnet18", "mobilenetv3_large_100", "convnext_tiny", "vgg16",
                                               "tv:resnet18", "efficientnet_lite0"]))
def test_new_head_fits_the_body_features(name):
    model = pretrained(name, 3, weights=None).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


ZOO = sorted(set().union(*(p.zoo.archs for p in PROFILES.values())))


@pytest.mark.parametrize("arch", _vgg_is_slow(ZOO))
def test_every_zoo_architecture_builds_with_a_new_head(arch):
    model = pretrained(arch, 3, weights=None).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.meta["arch"] == arch and model.meta["source"] == "random init"


def test_deprecated_pretrained_flag_and_name_still_work():
    with pytest.warns(DeprecationWarning, match="weights"):
        model = pretrained(LITE0, 2, pretrained=False)
    assert model.meta["source"] == "random init"
    with pytest.warns(DeprecationWarning, match="arch"):
        assert pretrained(name=LITE0, n_out=2, weights=None).meta["arch"] == LITE0


def test_unknown_keyword_is_refused():
    with pytest.raises(TypeError, match="bogus"):
        pretrained(LITE0, 2, weights=None, bogus=1)


@pytest.mark.parametrize("arch", [None, "", 3])
def test_no_name_lists_the_offline_models(arch):
    with pytest.raises(UnknownModelError, match="efficientnet_lite0"):
        pretrained(arch, 2, weights=None)


# ---------------------------------------------------------------- a user's weights file: clear errors, known layouts

def test_truncated_weights_file_says_so(resnet18_file, tmp_path):
    path, _ = resnet18_file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsFileError, match="truncated"):
        pretrained("resnet18", 2, weights=cut)


def test_pickled_model_file_is_refused_for_safety(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), path)   # a whole module, not a state dict
    with pytest.raises(WeightsFileError, match="state_dict"):
        load_weights(path)


def _zip_without_torch(path):
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "a zip archive, not a torch.save file")


@pytest.mark.parametrize("kind", ["text", "passwd-like", "zip", "empty", "folder", "pickle of garbage"])
def test_a_file_that_is_no_checkpoint_is_named_and_refused(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("hello world\n")
    elif kind == "passwd-like":
        path.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    elif kind == "zip":
        _zip_without_torch(path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"\x80\x02garbage")
    for load in (lambda: load_weights(path), lambda: pretrained("resnet18", 2, weights=path)):
        with pytest.raises(WeightsFileError, match="not a PyTorch checkpoint") as e:
            load()
        assert str(path) in str(e.value) and "state_dict()" in str(e.value)


def test_etc_passwd_is_not_taken_for_weights():
    from pathlib import Path
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd on this system")
    with pytest.raises(WeightsFileError, match="/etc/passwd is not a PyTorch checkpoint"):
        pretrained("resnet18", 2, weights="/etc/passwd")


def test_lite_weights_in_their_own_key_layout_load_from_a_user_file(lite0_state_dict, tmp_path):
    path = tmp_path / "lite0_own_layout.pth"
    torch.save(lite0_state_dict, path)   # the `_blocks.0._bn1` names of the shipped file
    assert any(k.startswith("_blocks.") for k in lite0_state_dict)
    mine, shipped = pretrained(LITE0, weights=path), pretrained(LITE0)
    assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), shipped.state_dict().values()))


def test_lite_weights_of_another_size_are_refused(lite0_state_dict, tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(lite0_state_dict, path)
    with pytest.raises(WeightsFileError, match="another lite size"):
        pretrained("efficientnet_lite1", weights=path)


def test_a_fine_tuned_classifier_saved_whole_loads_back(tmp_path):
    torch.manual_seed(0)
    net = pretrained("resnet18", 3, weights=None)
    path = tmp_path / "mine.pth"
    torch.save(net.state_dict(), path)
    back = pretrained("resnet18", 3, weights=path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    with pytest.raises(WeightsFileError, match="another shape"):
        pretrained("resnet18", 5, weights=path)


def test_weights_of_another_architecture_are_explained(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(WeightsFileError, match="do not fit 'resnet34'.*missing keys") as e:
        pretrained("resnet34", 2, weights=path)
    assert e.value.__cause__ is None and e.value.__suppress_context__   # not torch's list of every key


def test_a_mismatch_is_explained_in_a_few_lines(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(WeightsFileError) as e:
        pretrained("efficientnet_lite0", 2, weights=path)   # 291 missing, 100+ unexpected keys, others' shapes
    msg = str(e.value)
    assert len(msg) < 600 and msg.count("'") <= 20, msg
    assert "missing" in msg and "unexpected" in msg and "another architecture" in msg
    with pytest.raises(WeightsFileError, match=r"head.1.weight: \(3, 512\) in the file, \(5, 512\)"):
        torch.manual_seed(0)
        net = pretrained("resnet18", 3, weights=None)
        torch.save(net.state_dict(), path.with_name("r18_3class.pth"))
        pretrained("resnet18", 5, weights=path.with_name("r18_3class.pth"))


def test_unreachable_hub_is_detected_in_seconds_without_hf_hub_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    with socket.socket() as s:   # a loopback port nobody listens on stands for the unreachable hub
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="127.0.0.1 cannot be reached") as info:
        pretrained("resnet18", 2, weights="imagenet")
    assert time.perf_counter() - start < 10        # huggingface_hub's own retries take ~45 s
    assert LITE0 in str(info.value)
    assert hf_constants.HF_HUB_OFFLINE is False    # the offline switch is put back


def test_reachable_sees_a_listening_loopback_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        assert reachable(url)
    assert not reachable(url, timeout=1)


# ---------------------------------------------------------------- the record (ModelCfg) and the sources

def test_offline_record_holds_the_preprocessing_facts(offline_model):
    name, model = offline_model
    w, cfg = OFFLINE_WEIGHTS[name], model.meta
    assert isinstance(cfg, ModelCfg)
    assert (cfg.arch, cfg.img_size, cfg.stats, cfg.interpolation, cfg.resize, cfg.sha256, cfg.timm_arch) == \
        (name, w.input_size, w.stats, "bicubic", "squash", w.sha256, w.timm_arch)
    assert cfg.source == w.source


def test_record_reads_as_the_meta_dict_it_replaces(lite0_random_2class):
    lite0 = lite0_random_2class
    cfg = lite0.meta
    assert cfg["input_size"] == cfg.img_size == 224 and cfg["stats"] == ((0.5,) * 3, (0.5,) * 3)
    assert cfg["source"] == "random init" and cfg["sha256"] is None and cfg.get("nope", 1) == 1
    assert "stats" in cfg and "input_size" in cfg and "nope" not in cfg
    assert dict(cfg)["img_size"] == 224 and model_stats(lite0) == cfg.stats
    with pytest.raises(KeyError, match="img_size"):
        cfg["size"]


def test_record_is_frozen_and_checked():
    import copy
    import dataclasses
    import pickle
    cfg = ModelCfg("x", 32, [0.5, 0.5, 0.5], (0.25, 0.25, 0.25), "bilinear")
    assert cfg.mean == (0.5, 0.5, 0.5) and pickle.loads(pickle.dumps(cfg)) == cfg == copy.deepcopy(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.img_size = 64
    with pytest.raises(ValueError, match="bicubic"):
        ModelCfg("x", interpolation="cubic")
    with pytest.raises(ValueError, match="squash"):
        ModelCfg("x", resize="pad")
    with pytest.raises(ValueError, match="one value per RGB channel"):
        ModelCfg("x", mean=(0.5,))


def test_timm_record_follows_its_pretrained_cfg():
    model = pretrained("resnet18", 2, weights=None)
    cfg = timm.create_model("resnet18", pretrained=False).pretrained_cfg
    assert (model.meta.img_size, model.meta.mean, model.meta.std, model.meta.interpolation) == \
        (cfg["input_size"][-1], tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])


def test_torchvision_record_keeps_224_px_and_imagenet_stats():
    cfg = pretrained("tv:resnet18", 2, weights=None).meta
    assert (cfg.arch, cfg.img_size, cfg.stats, cfg.interpolation) == \
        ("tv:resnet18", 224, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "bilinear")


def test_sources_are_a_registry(monkeypatch):
    assert list(MODEL_SOURCES) == ["offline", "torchvision", "timm"]
    built = []

    def body(arch, imagenet):
        built.append((arch, imagenet))
        return timm.create_model("resnet18", pretrained=False), ModelCfg(arch, 64)

    monkeypatch.setitem(MODEL_SOURCES, "toy", ModelSource(body, lambda p: ["toy:a"], lambda a: a.startswith("toy:")))
    model = pretrained("toy:a", 2, weights=None)
    assert built == [("toy:a", False)] and model.meta.img_size == 64
    assert list_archs("*", "toy") == ["toy:a"]
    assert pretrained(LITE0, 2, weights=None).meta.arch == LITE0   # the others still answer their names

"""Tests for convtips_lib.core.data: ELPV table and split, DataLoaders, image checks, folders and offline downloads."""
import functools
import hashlib
import http.server
import random
import re
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastai.data
import pandas as pd
from convtips_lib.core.data import (DEFECT_LEVELS, VALID_N, BadImageError, DataUnreachableError, _elpv_frame_cached,
                                    OpenResized, check_images, elpv_dls, elpv_frame, folder_dls, open_image, plain_train_dl,
                                    preload_dls, resize_image, rgb_image, subsample, tensor_dls, untar_dls,
                                    valid_labels, drop_normalize)
from convtips_lib.core.profiles import profile

N_ELPV = 2624
COLUMNS = ["path", "prob", "type", "defective", "label_bin", "label_4", "is_valid"]


# ---------------------------------------------------------------- helpers and fixtures

def _write_pngs(folder: Path, n: int, size: int = 32, seed: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _write_bad(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(512)))
    return path


def _make_class_folder(root: Path, classes=("cat", "dog"), n: int = 8) -> Path:
    for k, c in enumerate(classes):
        _write_pngs(root / c, n, seed=k)
    return root


@pytest.fixture(scope="module")
def frame():
    return elpv_frame()


@pytest.fixture(scope="module")
def small_cfg():
    return profile("smoke").with_(bs=4)


@pytest.fixture(scope="module")
def binary_dls():
    return elpv_dls(profile("smoke"), task="binary")


@pytest.fixture
def no_proxy(monkeypatch):
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path, no_proxy):
    """(folder, port): a loopback HTTP server serving `folder`, shut down after the test."""
    root = tmp_path / "serve"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _site_packages_state() -> dict:
    """Name -> md5 of every file in fastai's `data` package folder (where download_checks.py lives)."""
    folder = Path(fastai.data.__file__).parent
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


# ---------------------------------------------------------------- elpv_frame

def test_elpv_frame_has_2624_rows_and_columns(frame):
    assert len(frame) == N_ELPV
    assert list(frame.columns) == COLUMNS


def test_elpv_frame_paths_exist(frame):
    assert all(Path(p).is_file() for p in frame["path"].head(20))
    assert frame["path"].is_unique


def test_elpv_frame_types_are_mono_and_poly(frame):
    assert set(frame["type"]) == {"mono", "poly"}


def test_label_bin_is_defective_iff_prob_at_least_half(frame):
    assert set(frame["label_bin"]) == {"defective", "functional"}
    assert ((frame["label_bin"] == "defective") == (frame["prob"] >= 0.5)).all()
    assert (frame["defective"] == (frame["prob"] >= 0.5)).all()


def test_label_4_values(frame):
    assert set(frame["label_4"]) == {"0", "1/3", "2/3", "1"}
    expected = {"0": 0.0, "1/3": 1 / 3, "2/3": 2 / 3, "1": 1.0}
    assert np.allclose(frame["label_4"].map(expected).astype(float), frame["prob"], atol=1e-3)


def test_label_4_is_ordered_by_defect_probability(frame):
    assert isinstance(frame["label_4"].dtype, pd.CategoricalDtype) and frame["label_4"].cat.ordered
    assert tuple(frame["label_4"].cat.categories) == DEFECT_LEVELS
    by_level = frame.sort_values("label_4", kind="stable")["prob"]
    assert by_level.is_monotonic_increasing                      # sorting by level sorts by probability
    assert (frame["label_4"] >= "2/3").sum() == frame["defective"].sum()


def test_elpv_frame_returns_a_copy(frame):
    df = elpv_frame()
    df.loc[:, "is_valid"] = False
    assert elpv_frame()["is_valid"].any()


# ---------------------------------------------------------------- split

def test_split_is_exactly_1968_train_656_valid(frame):
    assert (frame["is_valid"].sum(), (~frame["is_valid"]).sum()) == (VALID_N, N_ELPV - VALID_N) == (656, 1968)


def test_split_is_stratified_by_label_and_type(frame):
    strata = frame.groupby(["label_4", "type"], observed=True)["is_valid"].agg(["sum", "count"])
    assert len(strata) == 8
    for stratum, (n_valid, n) in strata.iterrows():
        assert abs(n_valid - 0.25 * n) <= 1, stratum                # within one cell of a quarter


def test_split_does_not_depend_on_the_profile_seed(frame, monkeypatch):
    monkeypatch.setenv("CONVTIPS_SEED", "3")
    elpv_dls(profile("smoke"), frac=0.05, img_size=32)               # seeds every generator with 3
    _elpv_frame_cached.cache_clear()
    assert (elpv_frame()["is_valid"].values == frame["is_valid"].values).all()


def test_split_is_identical_on_repeated_calls(frame):
    assert (elpv_frame()["is_valid"].values == frame["is_valid"].values).all()


# ---------------------------------------------------------------- subsample

def test_subsample_keeps_all_valid_rows(frame):
    sub = subsample(frame, 0.1, seed=0)
    assert set(sub.index[sub["is_valid"]]) == set(frame.index[frame["is_valid"]])


def test_subsample_takes_about_frac_of_train(frame):
    sub = subsample(frame, 0.1, seed=0)
    n_train = (~frame["is_valid"]).sum()
    assert (~sub["is_valid"]).sum() == pytest.approx(0.1 * n_train, abs=8)


def test_subsample_full_fraction_keeps_everything(frame):
    assert sorted(subsample(frame, 1.0).index) == sorted(frame.index)


@pytest.mark.parametrize("seed", [0, 7])
def test_subsample_is_nested(frame, seed):
    small, large = subsample(frame, 0.1, seed), subsample(frame, 0.5, seed)
    small_train = set(small.index[~small["is_valid"]])
    large_train = set(large.index[~large["is_valid"]])
    assert small_train and small_train < large_train


def test_subsample_depends_on_seed(frame):
    a, b = subsample(frame, 0.1, 0), subsample(frame, 0.1, 1)
    assert set(a.index[~a["is_valid"]]) != set(b.index[~b["is_valid"]])


@pytest.mark.parametrize("frac", [0, 1.5, -0.1])
def test_subsample_rejects_bad_frac(frame, frac):
    with pytest.raises(ValueError, match="frac"):
        subsample(frame, frac)


# ---------------------------------------------------------------- elpv_dls

def test_elpv_dls_binary_batch_shape(binary_dls):
    cfg = profile("smoke")
    x, y = binary_dls.one_batch()
    assert tuple(x.shape) == (cfg.bs, 3, cfg.img_size, cfg.img_size)
    assert tuple(y.shape) == (cfg.bs,)


def test_elpv_dls_img_size_and_bs_override_the_profile():
    x, y = elpv_dls(profile("smoke"), frac=0.05, img_size=32, bs=8).one_batch()
    assert tuple(x.shape) == (8, 3, 32, 32) and tuple(y.shape) == (8,)


def test_elpv_dls_deprecated_size_still_works():
    with pytest.warns(DeprecationWarning, match="img_size"):
        dls = elpv_dls(profile("smoke"), frac=0.05, size=32, bs=8)
    assert tuple(dls.one_batch()[0].shape) == (8, 3, 32, 32)


def test_elpv_dls_batch_is_float_in_unit_range(binary_dls):
    x, _ = binary_dls.one_batch()
    assert x.is_floating_point()
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_elpv_dls_channels_are_replicated_grayscale(binary_dls):
    x, _ = binary_dls.one_batch()
    assert (x[:, 0] == x[:, 1]).all() and (x[:, 0] == x[:, 2]).all()


def test_elpv_dls_binary_vocab(binary_dls):
    assert list(binary_dls.vocab) == ["defective", "functional"]


def test_elpv_dls_uses_fixed_valid_set_and_train_frac(binary_dls, frame):
    assert len(binary_dls.valid_ds) == frame["is_valid"].sum() == VALID_N
    assert set(binary_dls.valid_ds.items["path"]) == set(frame.loc[frame["is_valid"], "path"])
    n_train = (~frame["is_valid"]).sum()
    assert len(binary_dls.train_ds) == pytest.approx(profile("smoke").train_frac * n_train, abs=8)


def test_elpv_dls_4class_vocab_is_in_defect_order():
    dls = elpv_dls(profile("smoke"), task="4class", frac=0.05, img_size=32)
    assert list(dls.vocab) == ["0", "1/3", "2/3", "1"] and dls.c == 4
    names = np.array(dls.vocab)[valid_labels(dls)]
    assert (names == dls.valid_ds.items["label_4"].astype(str).to_numpy()).all()   # indices decode to the labels


def test_valid_labels_are_the_labels_in_loader_order(binary_dls):
    got = valid_labels(binary_dls)
    want = [list(binary_dls.vocab).index(label) for label in binary_dls.valid_ds.items["label_bin"]]
    assert got.tolist() == want and got.shape == (VALID_N,)


def test_plain_train_dl_serves_the_training_items_in_order_without_augmentation():
    from fastai.vision.all import Flip
    dls = elpv_dls(profile("smoke"), frac=0.05, img_size=32, bs=16, tfms=[Flip(p=1.0)])
    dl = plain_train_dl(dls)
    assert list(dl.items["path"]) == list(dls.train_ds.items["path"]) and not dl.shuffle
    xb, _ = dl.one_batch()
    first = np.asarray(dls.train_ds[0][0], dtype=np.float32).transpose(2, 0, 1) / 255   # as opened, not flipped
    assert np.allclose(np.asarray(xb[0].cpu()), first, atol=1e-6)
    shuffled = plain_train_dl(dls, shuffle=True)
    assert shuffled.shuffle and shuffled.drop_last


def test_tensor_dls_drops_the_last_partial_train_batch_unless_it_is_the_only_one():
    import torch
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    dls = tensor_dls(x, y, x[:5], y[:5], ["a", "b"], bs=4)
    assert [len(b[1]) for b in dls.train] == [4, 4] and [len(b[1]) for b in dls.valid] == [5]   # valid: 4 x bs
    assert [len(b[1]) for b in tensor_dls(x, y, x, y, ["a", "b"], bs=4, val_bs=3).valid] == [3, 3, 3, 1]
    assert dls.c == 2 and list(dls.vocab) == ["a", "b"]
    one = tensor_dls(x[:3], y[:3], x[:3], y[:3], ["a", "b"], bs=4)
    assert [len(b[1]) for b in one.train] == [3]


def test_elpv_dls_unknown_task_raises():
    with pytest.raises(ValueError, match="binary"):
        elpv_dls(profile("smoke"), task="regression")


# ---------------------------------------------------------------- open_image / check_images

def test_open_image_reads_good_png_as_rgb(tmp_path):
    (p,) = _write_pngs(tmp_path, 1)
    im = open_image(p)
    assert im.mode == "RGB" and im.size == (32, 32)


def test_open_image_corrupt_file_raises_bad_image_error(tmp_path):
    bad = _write_bad(tmp_path / "bad.png")
    with pytest.raises(BadImageError, match="bad.png"):
        open_image(bad)


def test_open_image_missing_file_raises_bad_image_error(tmp_path):
    with pytest.raises(BadImageError, match="missing.png"):
        open_image(tmp_path / "missing.png")


def test_check_images_skip_returns_good_and_warns(tmp_path):
    good = _write_pngs(tmp_path, 3)
    bad = _write_bad(tmp_path / "bad.png")
    with pytest.warns(UserWarning, match="bad.png"):
        kept = check_images(good[:2] + [bad] + good[2:], on_bad="skip")
    assert kept == good


def test_check_images_raise_names_file(tmp_path):
    good = _write_pngs(tmp_path, 2)
    bad = _write_bad(tmp_path / "bad.png")
    with pytest.raises(BadImageError, match="bad.png"):
        check_images(good + [bad])


def test_check_images_all_good_does_not_warn(tmp_path, recwarn):
    good = _write_pngs(tmp_path, 2)
    assert check_images(good, on_bad="skip") == good
    assert not [w for w in recwarn if "unreadable" in str(w.message)]


def test_check_images_rejects_bad_on_bad(tmp_path):
    with pytest.raises(ValueError, match="on_bad"):
        check_images([], on_bad="ignore")


# ---------------------------------------------------------------- folder_dls

def test_folder_dls_two_classes(tmp_path, small_cfg):
    root = _make_class_folder(tmp_path / "pics")
    dls = folder_dls(root, small_cfg)
    assert list(dls.vocab) == ["cat", "dog"]
    assert len(dls.train_ds) + len(dls.valid_ds) == 16
    assert len(dls.valid_ds) == 4
    x, y = dls.one_batch()
    assert tuple(x.shape) == (4, 3, 64, 64)


def test_folder_dls_uses_train_valid_folders(tmp_path, small_cfg):
    root = tmp_path / "pics"
    _make_class_folder(root / "train", n=6)
    _make_class_folder(root / "valid", n=2)
    dls = folder_dls(root, small_cfg)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (12, 4)
    assert list(dls.vocab) == ["cat", "dog"]


def test_folder_dls_over_samples_the_rare_class(tmp_path, small_cfg):
    root = tmp_path / "pics"
    _make_class_folder(root / "train", ("rare",), n=2)
    _make_class_folder(root / "train", ("common",), n=14)
    _make_class_folder(root / "valid", ("rare", "common"), n=2)
    dls = folder_dls(root, small_cfg, sampling_weights={"rare": 1 / 2, "common": 1 / 14}, seed=0)
    k = list(dls.vocab).index("rare")
    drawn = np.concatenate([y.cpu().numpy() for _, y in dls.train])
    assert 0.25 < (drawn == k).mean() < 0.75            # 2 of 16 without weights, about half with them
    with pytest.raises(ValueError, match="every class"):
        folder_dls(root, small_cfg, sampling_weights={"rare": 1.0})


def test_folder_dls_missing_folder_raises(tmp_path, small_cfg):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_dls(tmp_path / "nowhere", small_cfg)


def test_folder_dls_corrupt_image_names_file(tmp_path, small_cfg):
    root = _make_class_folder(tmp_path / "pics")
    _write_bad(root / "dog" / "broken_7.png")
    with pytest.raises(BadImageError, match="broken_7.png"):
        folder_dls(root, small_cfg)


def test_folder_dls_skip_leaves_out_corrupt_image(tmp_path, small_cfg):
    root = _make_class_folder(tmp_path / "pics")
    _write_bad(root / "dog" / "broken_7.png")
    with pytest.warns(UserWarning, match="broken_7.png"):
        dls = folder_dls(root, small_cfg, on_bad="skip")
    assert len(dls.train_ds) + len(dls.valid_ds) == 16


def test_folder_dls_one_class_raises(tmp_path, small_cfg):
    root = tmp_path / "pics"
    _write_pngs(root / "cat", 8)
    with pytest.raises(ValueError, match="one class"):
        folder_dls(root, small_cfg)


def test_folder_dls_empty_folder_raises(tmp_path, small_cfg):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadImageError, match="no readable images"):
        folder_dls(tmp_path / "empty", small_cfg)


# ---------------------------------------------------------------- untar_dls

def test_untar_dls_unknown_name_lists_known(small_cfg):
    with pytest.raises(ValueError) as info:
        untar_dls("no_such_dataset", small_cfg)
    msg = str(info.value)
    assert "no_such_dataset" in msg
    assert "PETS" in msg and "IMAGENETTE_160" in msg


def test_untar_dls_from_loopback_server(tmp_path, http_root, small_cfg):
    root, port = http_root
    src = _make_class_folder(tmp_path / "src" / "x")
    with tarfile.open(root / "x.tgz", "w:gz") as tar:
        tar.add(src, arcname="x")
    before = _site_packages_state()

    dls = untar_dls(f"http://127.0.0.1:{port}/x.tgz", small_cfg, base=tmp_path / "dl")

    assert list(dls.vocab) == ["cat", "dog"]
    assert len(dls.train_ds) + len(dls.valid_ds) == 16
    assert (tmp_path / "dl" / "archive" / "x.tgz").is_file()
    assert (tmp_path / "dl" / "data" / "x" / "cat").is_dir()
    assert _site_packages_state() == before, "untar_data wrote into fastai's package folder"


def test_untar_dls_second_call_uses_extracted_copy(tmp_path, http_root, small_cfg):
    root, port = http_root
    src = _make_class_folder(tmp_path / "src" / "x")
    with tarfile.open(root / "x.tgz", "w:gz") as tar:
        tar.add(src, arcname="x")
    url = f"http://127.0.0.1:{port}/x.tgz"
    untar_dls(url, small_cfg, base=tmp_path / "dl")
    (root / "x.tgz").unlink()          # the server can no longer serve it
    dls = untar_dls(url, small_cfg, base=tmp_path / "dl")
    assert list(dls.vocab) == ["cat", "dog"]


def test_untar_dls_closed_port_raises_data_unreachable(tmp_path, no_proxy, small_cfg):
    url = f"http://127.0.0.1:{_closed_port()}/x.tgz"
    with pytest.raises(DataUnreachableError) as info:
        untar_dls(url, small_cfg, base=tmp_path / "dl")
    assert "elpv_dls" in str(info.value)
    assert url in str(info.value)


def test_untar_dls_missing_file_raises_data_unreachable(tmp_path, http_root, small_cfg):
    _, port = http_root
    with pytest.raises(DataUnreachableError, match="folder_dls"):
        untar_dls(f"http://127.0.0.1:{port}/absent.tgz", small_cfg, base=tmp_path / "dl")


# ---------------------------------------------------------------- memoised opener

def test_open_resized_memoises_and_rereads_a_changed_file(tmp_path):
    import os
    from convtips_lib.core.data import OpenResized
    path = tmp_path / "cell.png"
    Image.fromarray(np.full((30, 30), 10, np.uint8)).save(path)
    opener = OpenResized(8)
    first = opener(path)
    assert first.size == (8, 8) and first.mode == "RGB"
    assert opener(path) is first                                   # served from memory
    Image.fromarray(np.full((30, 30), 200, np.uint8)).save(path)
    os.utime(path, ns=(1, 1))                                      # a different modification time
    again = opener(path)
    assert again is not first and np.asarray(again).mean() == pytest.approx(200, abs=1)


def test_open_resized_names_a_missing_file(tmp_path):
    from convtips_lib.core.data import OpenResized
    with pytest.raises(BadImageError, match="gone.png"):
        OpenResized(8)(tmp_path / "gone.png")


# ---------------------------------------------------------------- hostile images (16-bit, bombs, empty, floats)

def _ramp16(path: Path) -> np.ndarray:
    """A 64 x 64 16-bit gray PNG with values spread over 0-65535 (as an EL camera writes): the array."""
    a = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(a).save(path)
    return a


def test_rgb_image_scales_a_16_bit_png_instead_of_saturating(tmp_path):
    a = _ramp16(tmp_path / "el16.png")
    assert Image.open(tmp_path / "el16.png").mode == "I;16"
    got = np.asarray(rgb_image(tmp_path / "el16.png"))
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], np.round(a / 65535 * 255).astype(np.uint8))
    assert (got == 255).mean() < 0.01          # PIL's own convert("RGB") makes ~99 % of these pixels white
    assert abs(got.mean() - 127.5) < 2


def test_16_bit_png_reaches_a_batch_scaled_in_folder_loaders_and_the_elpv_opener(tmp_path, small_cfg):
    for c in ("ok", "bad"):
        (tmp_path / c).mkdir()
        for i in range(4):
            _ramp16(tmp_path / c / f"{i}.png")
    x, _ = folder_dls(tmp_path, small_cfg, valid_pct=0.5, img_size=32).one_batch()
    assert 0.3 < float(x.mean()) < 0.7 and float((x > 0.99).float().mean()) < 0.05
    assert float(np.asarray(open_image(tmp_path / "ok" / "0.png")).mean()) == pytest.approx(127.5, abs=2)
    assert float(np.asarray(OpenResized(32)(tmp_path / "ok" / "1.png")).mean()) == pytest.approx(127.5, abs=2)


def test_rgb_image_accepts_paths_bytes_pil_arrays_and_tensors(tmp_path):
    import torch
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), (tmp_path / "a.png").read_bytes(), Image.fromarray(rgb),
                rgb, torch.from_numpy(rgb), rgb / 255.0, rgb.astype(np.float32)):
        np.testing.assert_array_equal(np.asarray(rgb_image(src)), rgb)
    np.testing.assert_array_equal(np.asarray(rgb_image(rgb[..., 0])), np.repeat(rgb[..., :1], 3, -1))


@pytest.mark.parametrize("bad, words", [
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((5, 0), np.uint8), "empty"),
    (np.full((4, 4, 3), -0.5), "[0, 1] or [0, 255]"),
    (np.full((4, 4, 3), 300.0), "[0, 1] or [0, 255]"),
    (np.full((4, 4, 3), np.nan), "NaN"),
    (np.zeros((3, 8, 8), np.uint8), "channel-first"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
])
def test_rgb_image_refuses_what_it_cannot_read_and_says_why(bad, words):
    with pytest.raises(BadImageError, match=re.escape(words)):
        rgb_image(bad)


def test_decompression_bomb_is_named_and_skipped(tmp_path, monkeypatch):
    _write_pngs(tmp_path, 2, size=32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # 32 x 32 = 1,024 > 2 x 100: PIL's bomb error
    with pytest.raises(BadImageError, match="decompression bomb"):
        rgb_image(tmp_path / "img_0.png")
    with pytest.raises(BadImageError, match="img_0.png"):
        check_images([tmp_path / "img_0.png"])
    with pytest.warns(UserWarning, match="skipped 2"):
        assert check_images(sorted(tmp_path.glob("*.png")), on_bad="skip") == []


def test_check_images_skips_an_empty_image(tmp_path):
    good = _write_pngs(tmp_path, 1)
    empty = tmp_path / "empty.png"
    empty.write_bytes(good[0].read_bytes()[:16] + (0).to_bytes(4, "big") * 2 + good[0].read_bytes()[24:])
    with pytest.warns(UserWarning, match="skipped 1"):
        assert check_images([good[0], empty], on_bad="skip") == [good[0]]


# ---------------------------------------------------------------- folder_dls: bad options say what to pass

@pytest.mark.parametrize("valid_pct", [0, 1, 1.5, -0.2])
def test_folder_dls_refuses_a_valid_pct_outside_0_1(tmp_path, small_cfg, valid_pct):
    with pytest.raises(ValueError, match="valid_pct must lie strictly between 0 and 1"):
        folder_dls(_make_class_folder(tmp_path), small_cfg, valid_pct=valid_pct)


@pytest.mark.parametrize("kw", [dict(bs=0), dict(bs=-4), dict(img_size=0), dict(img_size=-32), dict(bs=2.5)])
def test_folder_and_elpv_loaders_refuse_non_positive_sizes(tmp_path, small_cfg, kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        folder_dls(_make_class_folder(tmp_path), small_cfg, **kw)
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        elpv_dls(small_cfg, **kw)


def test_folder_smaller_than_one_batch_trains_with_a_smaller_batch(tmp_path, small_cfg):
    root = _make_class_folder(tmp_path, n=3)   # 6 images: 4 for training with valid_pct 0.25 (batch 64)
    with pytest.warns(UserWarning, match="fewer than one batch"):
        dls = folder_dls(root, small_cfg.with_(bs=64), img_size=32)
    x, y = dls.one_batch()
    assert len(x) == len(dls.train_ds) and dls.bs == len(dls.train_ds)


def test_folder_too_small_for_a_validation_image_says_so(tmp_path, small_cfg):
    _write_pngs(tmp_path / "a", 1)
    _write_pngs(tmp_path / "b", 1, seed=1)
    with pytest.raises(ValueError, match="both need at least one"):
        folder_dls(tmp_path, small_cfg, valid_pct=0.1)


@pytest.mark.slow
def test_preload_dls_holds_standardised_images_in_the_loader_order(small_cfg):
    import torch
    dls = elpv_dls(small_cfg, frac=0.05, img_size=16)
    pre = preload_dls(dls)
    xt = pre.train.dataset.x
    assert xt.shape == (len(dls.train_ds), 3, 16, 16) and len(pre.valid.dataset.x) == VALID_N
    assert torch.allclose(xt.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(xt.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    assert np.array_equal(pre.valid.dataset.y.numpy(), valid_labels(dls)) and pre.vocab == list(dls.vocab)


# ---------------------------------------------------------------- the one resize

def _photo(w: int = 50, h: int = 70) -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_resize_image_squash_is_pil_resize_of_the_whole_image(interpolation):
    img = _photo()
    out = resize_image(img, 24, interpolation)
    want = img.resize((24, 24), getattr(Image.Resampling, interpolation.upper()))
    assert out.size == (24, 24) and np.array_equal(np.asarray(out), np.asarray(want))


def test_resize_image_crop_is_fastais_validation_resize():
    from fastai.vision.all import PILImage, Resize
    img = PILImage.create(_photo())
    want = Resize(24)(img, split_idx=1)
    assert np.array_equal(np.asarray(resize_image(img, 24, method="crop")), np.asarray(want))
    assert not np.array_equal(np.asarray(resize_image(img, 24, method="crop")), np.asarray(resize_image(img, 24)))


def test_resize_image_takes_any_image_and_refuses_unknown_settings():
    gray16 = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
    assert np.asarray(resize_image(gray16, 8)).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="bilinear"):
        resize_image(_photo(), 8, "cubic")
    with pytest.raises(ValueError, match="squash"):
        resize_image(_photo(), 8, method="pad")


def test_open_resized_is_the_bilinear_squash(tmp_path):
    _photo().save(tmp_path / "a.png")
    want = Image.open(tmp_path / "a.png").convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(OpenResized(16)(tmp_path / "a.png")), np.asarray(want))


def test_drop_normalize_removes_every_normalize():
    from fastai.vision.all import Normalize
    dls = elpv_dls(profile("smoke"), task="binary")
    dls.add_tfms([Normalize.from_stats((0.5,) * 3, (0.5,) * 3)], "after_batch")
    drop_normalize(dls)
    assert not any(isinstance(t, Normalize) for dl in dls.loaders for t in dl.after_batch.fs)


def test_roles_split_the_cells_into_train_tune_and_test_the_same_every_time():
    from convtips_lib.core.data import ROLES, TUNE_N, VALID_N, elpv_roles, tune_frame
    df = elpv_roles()
    counts = df["role"].value_counts()
    assert set(df["role"]) == set(ROLES) and counts["test"] == VALID_N and counts["tune"] == TUNE_N
    assert (df["role"] == "test").equals(df["is_valid"])                       # test is the benchmark's split
    assert df["role"].equals(elpv_roles()["role"])                            # seeded: the same cells each time
    train = df[~df["is_valid"]]
    share = train.groupby(["label_4", "type"], observed=True)["role"].apply(lambda r: (r == "tune").mean())
    assert share.between(TUNE_N / len(train) - 0.02, TUNE_N / len(train) + 0.02).all()   # stratified
    tf = tune_frame()
    assert len(tf) == len(train) and tf["is_valid"].sum() == TUNE_N and not tf["path"].isin(df[df["is_valid"]]["path"]).any()


def test_dataloaders_on_the_tune_frame_never_see_a_test_cell():
    from convtips_lib.core.data import TUNE_N, elpv_frame, tune_frame
    dls = elpv_dls(profile("smoke"), frac=0.1, df=tune_frame())
    test = set(elpv_frame().query("is_valid")["path"])
    seen = set(dls.train_ds.items["path"]) | set(dls.valid_ds.items["path"])
    assert len(dls.valid_ds) == TUNE_N and not seen & test


# ------------------------------------------------------------------ preloaded cells with augmentation (lesson 03)
def _roles(n: int = 40) -> pd.DataFrame:
    """A role table over n fake cells: 20 train, 10 tune, 10 test, two classes alternating."""
    role = ["train"] * 20 + ["tune"] * 10 + ["test"] * 10
    return pd.DataFrame({"path": [f"c{i}" for i in range(n)], "role": role, "is_valid": [r == "test" for r in role],
                         "label_4": [str(i % 2) for i in range(n)], "type": "mono"})


def test_cycle_rows_repeats_each_row_evenly():
    import torch
    from convtips_lib.core.data import cycle_rows
    x, y = torch.arange(7.0)[:, None], torch.arange(7)
    xc, yc = cycle_rows(x, y, 20, seed=1)
    counts = np.bincount(yc.numpy(), minlength=7)
    assert len(yc) == 20 and set(counts) == {2, 3} and torch.equal(xc[:, 0].long(), yc)
    with pytest.raises(ValueError, match="at least 7"):
        cycle_rows(x, y, 6)


def test_fold_tensor_dls_augments_only_training_and_counts_steps():
    import torch
    from fastai.vision.all import Flip
    from convtips_lib.core.data import fold_tensor_dls
    roles = _roles()
    x, y = torch.rand(40, 3, 8, 8), torch.tensor([i % 2 for i in range(40)])
    paths = list(roles["path"])
    dls = fold_tensor_dls(x, y, paths, roles, ["0", "1"], bs=4, tfms=[Flip(p=1.0)], frac=0.5, seed=0, epoch_steps=3)
    assert len(dls.train) == 3 and len(dls.train_ds) == 12                 # 3 full batches of 4, whatever the cells
    assert len(torch.unique(dls.train_ds.x.flatten(1), dim=0)) == 10 == dls.n_cells   # half the 20, stratified
    xb, _ = dls.valid.one_batch()
    kept = torch.unique(dls.train_ds.x.flatten(1), dim=0).view(-1, 3, 8, 8)
    m, s = kept.mean((0, 2, 3), keepdim=True), kept.std((0, 2, 3), keepdim=True)
    assert torch.allclose(xb, (x[30:] - m) / s, atol=1e-5)   # the test cells: standardised by the kept cells, unflipped
    xa, ya = dls.train.one_batch()
    assert xa.shape == (4, 3, 8, 8)
    flipped = ((xa * s + m).flip(-1)).flatten(1)                              # undo the flip: a train cell again
    assert all((kept.flatten(1) - f).abs().amax(1).min() < 1e-5 for f in flipped)

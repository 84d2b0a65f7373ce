"""Tests for reading your own folder of images (convtips_lib.core.data.folder_table / folder_dls): which folder names
the class, links, the split, the checks made before any training, very large and 12-bit images."""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convtips_lib.core import data
from convtips_lib.core.data import DataFolderError, folder_dls, folder_table, rgb_image
from convtips_lib.core.profiles import profile


def _pngs(folder: Path, n: int, shade: int = 128, size: int = 16) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(shade)
    paths = [folder / f"{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(np.clip(rng.normal(shade, 20, (size, size, 3)), 0, 255).astype(np.uint8)).save(p)
    return paths


def _real(paths) -> set:
    return {os.path.realpath(p) for p in paths}


@pytest.fixture(scope="module")
def cfg():
    return profile("smoke").with_(bs=4)


def test_the_first_folder_level_names_the_class_and_deeper_folders_belong_to_it(tmp_path):
    for cls in ("functional", "defective"):
        for year in ("2019", "2020"):
            _pngs(tmp_path / cls / year, 3, shade=200 if cls == "functional" else 40)
    df = folder_table(tmp_path, seed=0)
    assert sorted(set(df["label"])) == ["defective", "functional"]
    assert all(Path(p).relative_to(tmp_path).parts[0] == lab for p, lab in zip(df["path"], df["label"]))


def test_the_class_folder_is_below_train_and_valid(tmp_path, cfg):
    for split, n in (("train", 3), ("valid", 1)):
        for cls in ("a", "b"):
            _pngs(tmp_path / split / cls / "batch1", n)
    dls = folder_dls(tmp_path, cfg, img_size=16)
    assert list(dls.vocab) == ["a", "b"] and (len(dls.train_ds), len(dls.valid_ds)) == (6, 2)


def test_a_folder_link_back_up_is_not_followed_and_no_image_is_in_both_splits(tmp_path, cfg):
    for cls in ("functional", "defective"):
        _pngs(tmp_path / cls, 6)
    (tmp_path / "functional" / "loop").symlink_to("..")
    with pytest.warns(UserWarning, match="not following the folder link"):
        dls = folder_dls(tmp_path, cfg, img_size=16)
    train, valid = list(dls.train_ds.items), list(dls.valid_ds.items)
    assert len(train) + len(valid) == 12 and not _real(train) & _real(valid)


def test_links_to_the_same_file_count_once(tmp_path):
    for cls in ("a", "b"):
        _pngs(tmp_path / cls, 4)
    (tmp_path / "a" / "again.png").symlink_to(tmp_path / "b" / "0.png")
    outside = _pngs(tmp_path.parent / f"{tmp_path.name}_extra", 2)
    (tmp_path / "b" / "more").symlink_to(outside[0].parent, target_is_directory=True)   # a link outside: followed
    with pytest.warns(UserWarning, match="1 path.* left out"):
        df = folder_table(tmp_path)
    assert len(df) == 10 and len(_real(df["path"])) == 10


def test_a_class_only_in_valid_is_refused_before_training_naming_it(tmp_path, cfg):
    for cls in ("a", "b"):
        _pngs(tmp_path / "train" / cls, 3)
        _pngs(tmp_path / "valid" / cls, 1)
    _pngs(tmp_path / "valid" / "c", 1)
    with pytest.raises(DataFolderError, match="'c' have images in .*valid but none in .*train"):
        folder_dls(tmp_path, cfg)


def test_a_class_without_validation_images_is_refused(tmp_path):
    for cls in ("a", "b"):
        _pngs(tmp_path / "train" / cls, 3)
    _pngs(tmp_path / "valid" / "a", 1)
    with pytest.raises(DataFolderError, match="'b' have no images in .*valid"):
        folder_table(tmp_path)


def test_a_class_with_one_image_is_refused_with_the_fix(tmp_path):
    _pngs(tmp_path / "many", 8)
    _pngs(tmp_path / "one", 1)
    with pytest.raises(DataFolderError, match="'one' have a single image.*add images"):
        folder_table(tmp_path)


def test_the_random_split_is_stratified_every_class_validated(tmp_path):
    _pngs(tmp_path / "common", 30)
    _pngs(tmp_path / "rare", 2)
    for seed in range(5):
        df = folder_table(tmp_path, valid_pct=0.1, seed=seed)
        assert df.groupby("label")["is_valid"].sum().to_dict() == {"common": 3, "rare": 1}
    assert folder_table(tmp_path, seed=1)["is_valid"].tolist() == folder_table(tmp_path, seed=1)["is_valid"].tolist()


def test_test_folder_is_the_held_out_set_without_valid(tmp_path, cfg):
    for cls in ("a", "b"):
        _pngs(tmp_path / "train" / cls, 4)
        _pngs(tmp_path / "test" / cls, 2)
    df = folder_table(tmp_path)
    assert {Path(p).relative_to(tmp_path).parts[0] for p in df["path"][df["is_valid"]]} == {"test"}
    assert int(df["is_valid"].sum()) == 4 and len(df) == 12


def test_a_folder_left_out_beside_train_and_valid_is_named(tmp_path):
    for split in ("train", "valid", "test"):
        for cls in ("a", "b"):
            _pngs(tmp_path / split / cls, 2)
    with pytest.warns(UserWarning, match="test/ left out"):
        df = folder_table(tmp_path)
    assert len(df) == 8


def test_images_outside_a_class_folder_are_refused(tmp_path):
    for cls in ("a", "b"):
        _pngs(tmp_path / cls, 2)
    _pngs(tmp_path, 1)
    with pytest.raises(DataFolderError, match="directly in .*class sub-folder"):
        folder_table(tmp_path)


def test_skipped_images_are_listed(tmp_path, cfg):
    for cls in ("a", "b"):
        _pngs(tmp_path / cls, 3)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        dls = folder_dls(tmp_path, cfg, on_bad="skip", img_size=16)
    assert [p.name for p in dls.skipped] == ["broken.png"]


def test_an_image_over_max_pixels_is_read_downscaled_with_a_clear_warning(tmp_path, monkeypatch):
    for cls in ("a", "b"):
        _pngs(tmp_path / cls, 2, size=40)
    monkeypatch.setattr(data, "MAX_PIXELS", 400)           # 40 x 40 = 1,600 pixels: 4 x over
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # PIL warns (not refuses) between 1x and 2x
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        folder_table(tmp_path)
        img = rgb_image(tmp_path / "a" / "0.png")
    said = [str(w.message) for w in seen]
    assert img.size == (20, 20)
    assert any("4 image(s) have more than MAX_PIXELS (400) pixels and are read downscaled" in s for s in said)
    assert not any("decompression bomb DOS" in s for s in said) and not any(
        issubclass(w.category, Image.DecompressionBombWarning) for w in seen)


def test_twelve_bit_data_in_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    a = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)   # 0-4095, as a 12-bit EL camera writes
    Image.fromarray(a).save(tmp_path / "el12.png")
    got = np.asarray(rgb_image(tmp_path / "el12.png"))[..., 0]
    np.testing.assert_array_equal(got, np.round(a * (255 / 4095)).astype(np.uint8))
    assert len(np.unique(got)) == 256

"""Tests for convtips_lib.topics.imagenet: top-k, preprocessing variants, user images and sample photos."""
import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.data import chelsea  # noqa: E402

from convtips_lib.core.data import BadImageError  # noqa: E402
from convtips_lib.topics.imagenet import (SAMPLE_PHOTOS, load_user_image, photo_top5,  # noqa: E402
                                   prediction_summary, preprocess, preprocessing_variants, sample_photo, topk)

CATS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


@pytest.fixture(scope="module")
def variants(lite0_imagenet):
    return preprocessing_variants(lite0_imagenet, chelsea(), target="cat").set_index("variant")


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- predictions and preprocessing variants

def test_topk_on_chelsea_is_a_cat(lite0_imagenet):
    (label, p), *_ = topk(lite0_imagenet, chelsea())
    assert label.startswith(CATS) and p > 0.5


def test_prediction_summary_target(lite0_imagenet):
    x = preprocess(chelsea(), 224, lite0_imagenet.meta["stats"])
    s = prediction_summary(lite0_imagenet, x, target="cat")
    assert s["target_in_topk"] and 0.5 < s["target_prob"] <= 1 and s["prob"] <= 1
    assert set(prediction_summary(lite0_imagenet, x)) == {"label", "prob"}
    with pytest.raises(ValueError, match="no ImageNet class.*'zzzq'"):
        prediction_summary(lite0_imagenet, x, target="zzzq")


def test_preprocess_matches_torchvision():
    import torchvision.transforms.functional as TF
    stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pil = Image.fromarray(chelsea()).resize((48, 48), Image.BICUBIC)
    want = TF.normalize(TF.to_tensor(pil), *stats)[None]
    x = preprocess(chelsea(), 48, stats)
    assert x.shape == (1, 3, 48, 48) and torch.allclose(x, want, atol=1e-6)
    bgr = TF.normalize(TF.to_tensor(pil).flip(0), *stats)[None]       # channels swapped, then normalised
    assert torch.allclose(preprocess(chelsea(), 48, stats, bgr=True), bgr, atol=1e-6)
    assert torch.allclose(preprocess(chelsea(), 48, stats, normalize=False), TF.to_tensor(pil)[None])


def test_preprocess_resizes_as_told_and_bicubic_by_default():
    stats = ((0.5,) * 3, (0.5,) * 3)
    bilinear = Image.fromarray(chelsea()).resize((48, 48), Image.BILINEAR)
    x = preprocess(chelsea(), 48, stats, normalize=False, interpolation="bilinear")
    assert torch.equal(x[0], torch.from_numpy(np.asarray(bilinear, dtype=np.float32) / 255).permute(2, 0, 1))
    assert not torch.equal(x, preprocess(chelsea(), 48, stats, normalize=False))
    assert preprocess(chelsea(), 48, stats, resize="crop").shape == (1, 3, 48, 48)


def test_topk_and_variants_preprocess_as_the_models_record_says(lite0_imagenet):
    import copy
    import dataclasses
    assert lite0_imagenet.meta.interpolation == "bicubic"
    cat = chelsea()
    bicubic = prediction_summary(lite0_imagenet, preprocess(cat, 224, lite0_imagenet.meta.stats))
    assert topk(lite0_imagenet, cat, k=1)[0] == (bicubic["label"], bicubic["prob"])
    other = copy.deepcopy(lite0_imagenet)
    other.meta = dataclasses.replace(lite0_imagenet.meta, interpolation="nearest", img_size=160)
    nearest = prediction_summary(other, preprocess(cat, 160, other.meta.stats, interpolation="nearest"))
    assert topk(other, cat, k=1)[0] == (nearest["label"], nearest["prob"])
    row = preprocessing_variants(other, cat).set_index("variant").loc["correct"]
    assert row["prob"] == nearest["prob"] and "160 px" in row["change"]


def test_deprecated_size_still_works(lite0_imagenet):
    stats = lite0_imagenet.meta["stats"]
    with pytest.warns(DeprecationWarning, match="img_size"):
        assert torch.equal(preprocess(chelsea(), size=32, stats=stats), preprocess(chelsea(), 32, stats))
    with pytest.warns(DeprecationWarning, match="img_size"):
        assert topk(lite0_imagenet, chelsea(), k=2, size=64) == topk(lite0_imagenet, chelsea(), k=2, img_size=64)


def test_preprocessing_variants_table(variants):
    assert list(variants.columns) == ["change", "label", "prob", "target_in_topk", "target_prob"]
    assert {"correct", "no normalisation", "pixels 0-255", "ImageNet mean/std", "BGR", "half size", "64 px",
            "center crop, no resize"} == set(variants.index)
    assert variants["prob"].between(0, 1).all()


def test_correct_preprocessing_gives_a_cat(variants):
    correct = variants.loc["correct"]
    assert correct["label"].startswith(CATS) and correct["target_in_topk"]


def test_unscaled_pixels_lose_the_cat(variants):
    assert not variants.loc["pixels 0-255", "target_in_topk"]
    assert variants.loc["pixels 0-255", "target_prob"] < 0.2 * variants.loc["correct", "target_prob"]
    assert variants.loc["BGR", "prob"] != variants.loc["correct", "prob"]


# ---------------------------------------------------------------- user images and sample photos

def test_load_user_image_from_bytes_and_path(tmp_path):
    gray = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    arr = load_user_image(_png_bytes(gray))
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8 and (arr[..., 0] == gray).all()
    path = tmp_path / "cat.png"
    path.write_bytes(_png_bytes(chelsea()))
    assert (load_user_image(path) == chelsea()).all()


def test_load_user_image_corrupt_bytes_names_the_file(tmp_path):
    with pytest.raises(BadImageError, match="holiday.jpg.*JPEG or PNG"):
        load_user_image(b"not an image at all", name="holiday.jpg")
    with pytest.raises(BadImageError, match="uploaded image"):
        load_user_image(_png_bytes(chelsea())[:100])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(BadImageError, match="broken.png"):
        load_user_image(bad)


@pytest.mark.parametrize("name", SAMPLE_PHOTOS)
def test_sample_photos_are_rgb(name):
    import skimage.data
    img, src = sample_photo(name), getattr(skimage.data, name)()
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    gray = src.ndim == 2
    assert all((img[..., c] == (src if gray else src[..., c])).all() for c in range(3))   # gray replicated


def test_sample_photo_unknown_lists_choices():
    with pytest.raises(ValueError, match="chelsea, coffee"):
        sample_photo("mona_lisa")


def test_photo_top5_by_name_and_by_upload(lite0_imagenet):
    df = photo_top5(lite0_imagenet, "chelsea")
    assert list(df.columns) == ["rank", "label", "prob"] and list(df["rank"]) == [1, 2, 3, 4, 5]
    assert df["prob"].is_monotonic_decreasing and df["label"][0].startswith(CATS)
    uploaded = photo_top5(lite0_imagenet, _png_bytes(chelsea()))
    assert list(uploaded["label"]) == list(df["label"])


# ---------------------------------------------------------------- hostile images reach topk as a clear error or a right answer

def test_topk_reads_a_path_bytes_floats_and_16_bit_alike(lite0_imagenet, tmp_path):
    img = chelsea()
    Image.fromarray(img).save(tmp_path / "cat.png")
    expected = topk(lite0_imagenet, img)
    for src in (tmp_path / "cat.png", str(tmp_path / "cat.png"), _png_bytes(img), img / 255.0,
                img.astype(np.uint16) * 257):
        got = topk(lite0_imagenet, src)
        assert [lab for lab, _ in got] == [lab for lab, _ in expected]
        assert got[0][1] == pytest.approx(expected[0][1], abs=1e-4)


@pytest.mark.parametrize("bad, words", [(np.zeros((0, 0, 3), np.uint8), "empty"),
                                         (np.full((8, 8, 3), 2.0e3), "rescale it first"),
                                         (b"not an image", "cannot read image")])
def test_topk_refuses_an_empty_or_unreadable_image(lite0_imagenet, bad, words):
    with pytest.raises(BadImageError, match=words):
        topk(lite0_imagenet, bad)


def test_load_user_image_scales_a_16_bit_upload():
    a = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    got = load_user_image(_png_bytes(a), "el.png")
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8 and (got == 255).mean() < 0.01

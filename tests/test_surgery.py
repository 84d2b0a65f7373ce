"""Tests for convtips_lib.core.surgery: parameter groups, one `depth` vocabulary, stages and split points."""
import pytest
import torch

from convtips_lib.core.models import OFFLINE_WEIGHTS, pretrained
from convtips_lib.core.surgery import (Frozen, body_stages, freeze, n_frozen, n_groups, param_groups,
                                       split_at, unfreeze)

LITE0 = "efficientnet_lite0"


def _trainable(params) -> list:
    return [p.requires_grad for p in params]


@pytest.fixture(scope="module")
def model():
    return pretrained(LITE0, 2, weights=None).eval()


def test_stages_compose_to_body(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = x
        for stage in body_stages(model):
            out = stage(out)
        assert out.shape == (2, 1280)
        assert torch.allclose(out, model.body(x), atol=1e-5)


@pytest.mark.parametrize("name", list(OFFLINE_WEIGHTS))
def test_stages_are_the_param_groups(name):
    net = pretrained(name, 2, weights=None)
    stages, groups = body_stages(net), param_groups(net)
    assert len(stages) == len(groups) - 1
    for stage, group in zip(stages, groups):
        assert {id(p) for p in stage.parameters()} == {id(p) for p in group}


@pytest.mark.parametrize("n", [0, 3, 7])
def test_freezing_n_groups_freezes_the_first_n_stages(n):
    net = pretrained(LITE0, 2, weights=None)
    assert freeze(net, n) == n
    for i, stage in enumerate(body_stages(net)):
        assert all(p.requires_grad == (i >= n) for p in stage.parameters())


@pytest.mark.parametrize("n", [0, 1, 4, 7, 8, "head", "middle", "none", 0.5])
def test_split_at_composes_to_model(model, n):
    prefix, rest = split_at(model, n)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rest(prefix(x)), model(x), atol=1e-5)
    if n in (8, "head"):
        assert prefix(x).shape == (2, 1280)


@pytest.mark.parametrize("n", [-1, 9, 2.0, True])
def test_split_at_rejects_bad_n(model, n):
    with pytest.raises(ValueError, match="0..8"):
        split_at(model, n)


def test_unsupported_body_names_the_alternative():
    net = pretrained("resnet18", 2, weights=None).eval()
    with pytest.raises(TypeError, match="depth='head'"):
        body_stages(net)
    prefix, rest = split_at(net, "head")  # pooled features work for any architecture
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rest(prefix(x)), net(x), atol=1e-5)




@pytest.mark.parametrize("depth, want", [("head", 8), ("middle", 4), ("none", 0), (0.25, 2), (1.0, 8), (3, 3)])
def test_one_depth_vocabulary(depth, want):
    assert n_frozen(8, depth) == want


@pytest.mark.parametrize("depth", ["top", -1, 9, 1.5, True, None])
def test_bad_depth_lists_the_choices(depth):
    with pytest.raises(ValueError, match="'head', 'middle', 'none'"):
        n_frozen(8, depth)


@pytest.mark.parametrize("n_body", [6, 8, 10])
def test_named_depths_freeze_all_half_or_none_of_the_body(n_body):
    assert [n_frozen(n_body, d) for d in ("head", "middle", "none")] == [n_body, n_body // 2, 0]


def test_freeze_then_unfreeze_counts_trainable_parameters(model):
    n = n_groups(model)
    freeze(model, "head")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.head.parameters()} and n == 8
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_stays_in_eval_mode_and_passes_no_gradient(model):
    wrapped = Frozen(model.body).train()
    assert wrapped.training and not model.body.training
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    assert not wrapped(x).requires_grad
    assert all(p.requires_grad for p in model.body.parameters())


# ---------------------------------------------------------------- param_groups / freeze

def test_lite0_has_nine_param_groups(lite0_random_2class):
    groups = param_groups(lite0_random_2class)
    assert len(groups) == 9
    assert groups[-1] == list(lite0_random_2class.head.parameters())


def test_param_groups_cover_every_parameter_once(lite0_random_2class):
    ids = [id(p) for g in param_groups(lite0_random_2class) for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in lite0_random_2class.parameters()}


def test_param_groups_without_group_matcher_use_children():
    model = pretrained("tv:resnet18", 2, weights=None)
    groups = param_groups(model)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(groups)


def test_freeze_head_leaves_only_head_trainable(lite0_random_2class):
    assert freeze(lite0_random_2class, "head") == 8
    head = {id(p) for p in lite0_random_2class.head.parameters()}
    for p in lite0_random_2class.parameters():
        assert p.requires_grad == (id(p) in head)


def test_freeze_middle_freezes_four_groups(lite0_random_2class):
    assert freeze(lite0_random_2class, "middle") == 4
    groups = param_groups(lite0_random_2class)
    for i, g in enumerate(groups):
        assert all(flag == (i >= 4) for flag in _trainable(g)), i


def test_freeze_by_group_count(lite0_random_2class):
    assert freeze(lite0_random_2class, 2) == 2
    groups = param_groups(lite0_random_2class)
    assert not any(_trainable(groups[1])) and all(_trainable(groups[2]))


def test_freeze_none_makes_all_trainable(lite0_random_2class):
    freeze(lite0_random_2class, "head")
    assert freeze(lite0_random_2class, "none") == 0
    assert all(_trainable(lite0_random_2class.parameters()))


def test_unfreeze_makes_all_trainable(lite0_random_2class):
    freeze(lite0_random_2class, "middle")
    unfreeze(lite0_random_2class)
    assert all(_trainable(lite0_random_2class.parameters()))


@pytest.mark.parametrize("depth", ["all", "body", 1.5, -1, 9, None])
def test_freeze_bad_depth_raises(lite0_random_2class, depth):
    with pytest.raises(ValueError, match="depth"):
        freeze(lite0_random_2class, depth)



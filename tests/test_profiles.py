"""Tests for convtips_lib.profiles: the smoke / cpu / gpu size profiles."""
import dataclasses

import pytest
import torch

from convtips_lib.profiles import PROFILES, Profile, ProfileError, profile


@pytest.fixture
def no_env(monkeypatch):
    """No CONVTIPS_PROFILE in the environment, whatever the shell running the tests sets."""
    monkeypatch.delenv("CONVTIPS_PROFILE", raising=False)
    return monkeypatch


def test_profiles_are_smoke_cpu_gpu():
    assert list(PROFILES) == ["smoke", "cpu", "gpu"]
    assert all(isinstance(p, Profile) and p.name == k for k, p in PROFILES.items())


def test_smoke_profile_fields():
    cfg = profile("smoke")
    assert cfg.name == "smoke"
    assert cfg.img_size == 64
    assert cfg.bs == 64
    assert cfg.epochs == 1
    assert cfg.lr == pytest.approx(3e-3)
    assert cfg.train_frac == pytest.approx(0.25)
    assert cfg.fractions == (0.05, 0.2)
    assert cfg.n_seeds == 1
    assert cfg.n_members == 2
    assert cfg.zoo_archs == ("resnet18", "resnet34", "resnet50", "mobilenetv3_large_100",
                             "tf_efficientnet_lite0", "vgg16")
    assert cfg.latency_reps == 2
    assert cfg.decides_claims is False
    assert cfg.seed == 42
    assert cfg.num_workers == 0


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (profile(n) for n in ("smoke", "cpu", "gpu"))
    assert smoke.img_size < cpu.img_size < gpu.img_size
    assert smoke.epochs < cpu.epochs < gpu.epochs
    assert smoke.train_frac < cpu.train_frac < gpu.train_frac == 1.0
    assert not smoke.decides_claims and cpu.decides_claims and gpu.decides_claims


def test_profile_name_is_case_and_space_insensitive():
    assert profile("  SMOKE ") is PROFILES["smoke"]


def test_env_var_overrides_auto_choice(no_env):
    no_env.setenv("CONVTIPS_PROFILE", "smoke")
    assert profile().name == "smoke"


def test_explicit_name_beats_env_var(no_env):
    no_env.setenv("CONVTIPS_PROFILE", "smoke")
    assert profile("gpu").name == "gpu"


def test_unknown_env_var_raises_profile_error(no_env):
    no_env.setenv("CONVTIPS_PROFILE", "tiny")
    with pytest.raises(ProfileError, match="tiny"):
        profile()


def test_unknown_name_raises_profile_error_listing_choices():
    with pytest.raises(ProfileError) as info:
        profile("huge")
    msg = str(info.value)
    assert "huge" in msg
    for name in ("smoke", "cpu", "gpu"):
        assert name in msg


def test_profile_error_is_a_value_error():
    assert issubclass(ProfileError, ValueError)


def test_auto_choice_is_cpu_without_cuda(no_env):
    no_env.setattr(torch.cuda, "is_available", lambda: False)
    assert profile().name == "cpu"


def test_auto_choice_is_gpu_with_cuda(no_env):
    no_env.setattr(torch.cuda, "is_available", lambda: True)
    assert profile().name == "gpu"


def test_profile_is_frozen():
    cfg = profile("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bs = 1
    assert cfg.bs == 64


def test_with_returns_changed_copy():
    cfg = profile("smoke")
    new = cfg.with_(epochs=5, bs=8)
    assert new is not cfg
    assert (new.epochs, new.bs) == (5, 8)
    assert (cfg.epochs, cfg.bs) == (1, 64)
    assert PROFILES["smoke"].epochs == 1
    assert new.with_(epochs=1, bs=64) == cfg


def test_with_rejects_unknown_field():
    with pytest.raises(TypeError):
        profile("smoke").with_(no_such_field=1)


def test_as_dict_has_every_field():
    d = profile("cpu").as_dict()
    assert set(d) == {f.name for f in dataclasses.fields(Profile)}
    assert d["name"] == "cpu" and d["img_size"] == 112

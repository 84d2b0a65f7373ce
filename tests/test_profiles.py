"""Tests for convtips_lib.core.profiles: the smoke / cpu / gpu size profiles."""
import dataclasses

import pytest
import torch

from convtips_lib.core.profiles import PROFILES, Profile, ProfileError, profile


@pytest.fixture
def no_env(monkeypatch):
    """No CONVTIPS_PROFILE or CONVTIPS_SEED in the environment, whatever the shell running the tests sets."""
    monkeypatch.delenv("CONVTIPS_PROFILE", raising=False)
    monkeypatch.delenv("CONVTIPS_SEED", raising=False)
    return monkeypatch


def test_profiles_are_smoke_cpu_gpu():
    assert list(PROFILES) == ["smoke", "cpu", "gpu"]
    assert all(isinstance(p, Profile) and p.name == k for k, p in PROFILES.items())


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_is_usable(name):
    cfg = PROFILES[name]
    assert 0 < cfg.train_frac <= 1 and cfg.bs >= 2 and cfg.lr > 0
    assert min(cfg.epochs, cfg.head_epochs, cfg.n_seeds, cfg.latency_reps) >= 1
    assert list(cfg.fractions) == sorted(set(cfg.fractions)) and 0 < cfg.fractions[0] and cfg.fractions[-1] <= 1
    assert cfg.n_members >= 2                     # an ensemble has at least two members
    assert len(cfg.aug_epochs) == len(cfg.aug_fracs) and all(0 < f <= 1 for f in cfg.aug_fracs)
    assert len(set(cfg.zoo_archs)) == len(cfg.zoo_archs) > 1


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (profile(n) for n in ("smoke", "cpu", "gpu"))
    assert smoke.img_size < cpu.img_size < gpu.img_size
    assert smoke.epochs < cpu.epochs < gpu.epochs
    assert smoke.train_frac < cpu.train_frac < gpu.train_frac == 1.0
    assert not smoke.decides_claims and cpu.decides_claims and gpu.decides_claims
    assert set(smoke.zoo_archs) <= set(cpu.zoo_archs) <= set(gpu.zoo_archs)
    assert smoke.n_seeds <= cpu.n_seeds <= gpu.n_seeds and smoke.n_members <= cpu.n_members <= gpu.n_members


def test_profile_name_is_case_and_space_insensitive(no_env):
    assert profile("  SMOKE ") is PROFILES["smoke"]


@pytest.mark.parametrize("value, seed", [("7", 7), (" 0 ", 0), ("123456", 123456)])
def test_seed_env_var_replaces_only_the_seed(no_env, value, seed):
    no_env.setenv("CONVTIPS_SEED", value)
    cfg = profile("cpu")
    assert cfg.seed == seed and cfg == PROFILES["cpu"].with_(seed=seed)


def test_blank_seed_env_var_keeps_the_profile(no_env):
    no_env.setenv("CONVTIPS_SEED", "  ")
    assert profile("cpu") is PROFILES["cpu"]


@pytest.mark.parametrize("value", ["abc", "1.5", "4two", "-1", str(2 ** 32)])
def test_bad_seed_env_var_names_the_variable(no_env, value):
    no_env.setenv("CONVTIPS_SEED", value)
    with pytest.raises(ProfileError, match="CONVTIPS_SEED"):
        profile("smoke")


def test_every_accepted_seed_seeds_every_generator(no_env):
    from convtips_lib.core.env import seed_everything
    for value in ("0", "7", str(2 ** 32 - 1)):
        no_env.setenv("CONVTIPS_SEED", value)
        seed_everything(profile("smoke").seed)   # numpy refuses negative seeds and seeds >= 2**32


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
    before = cfg.bs
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bs = before + 1
    assert cfg.bs == before


def test_with_returns_changed_copy():
    cfg = profile("smoke")
    before = (cfg.epochs, cfg.bs)
    new = cfg.with_(epochs=cfg.epochs + 4, bs=cfg.bs // 2)
    assert new is not cfg
    assert (new.epochs, new.bs) == (before[0] + 4, before[1] // 2)
    assert (cfg.epochs, cfg.bs) == before and (PROFILES["smoke"].epochs, PROFILES["smoke"].bs) == before
    assert new.with_(epochs=before[0], bs=before[1]) == cfg


def test_with_rejects_unknown_field():
    with pytest.raises(TypeError):
        profile("smoke").with_(no_such_field=1)


def test_as_dict_has_every_field_and_survives_json():
    import json
    cfg = profile("cpu")
    d = cfg.as_dict()
    assert d == {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Profile)}
    back = json.loads(json.dumps(d))   # stored in every results record
    assert Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in back.items()}) == cfg

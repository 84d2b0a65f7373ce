"""Tests for convtips_lib.core.profiles: the smoke / cpu / gpu size profiles."""
import dataclasses

import pytest
import torch

from convtips_lib.core.profiles import PROFILES, SECTIONS, Profile, ProfileError, profile


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
    assert list(cfg.transfer.fractions) == sorted(set(cfg.transfer.fractions)) and 0 < cfg.transfer.fractions[0] and cfg.transfer.fractions[-1] <= 1
    assert cfg.ens.n_members >= 2                     # an ensemble has at least two members
    assert list(cfg.aug.fracs) == sorted(set(cfg.aug.fracs)) and all(0 < f <= 1 for f in cfg.aug.fracs)
    assert cfg.aug.policies[0] == "none" and cfg.aug.steps % cfg.aug.epoch_steps == 0   # whole epochs of equal steps
    assert {0, 1} <= set(cfg.aug.strengths) and min(cfg.aug.n_seeds, len(cfg.aug.lrs)) >= 1
    train_cells = 2624 * (1 - 1 / cfg.aug.folds) * 0.8 * max(cfg.aug.fracs)   # a fold's train cells, at most
    assert cfg.aug.epoch_steps * cfg.bs >= train_cells, "every train cell fits in an epoch (cycle_rows)"
    assert len(set(cfg.zoo.archs)) == len(cfg.zoo.archs) > 1


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (profile(n) for n in ("smoke", "cpu", "gpu"))
    assert smoke.img_size < cpu.img_size < gpu.img_size
    assert smoke.epochs < cpu.epochs < gpu.epochs
    assert smoke.train_frac < cpu.train_frac < gpu.train_frac == 1.0
    assert not smoke.decides_claims and cpu.decides_claims and gpu.decides_claims
    assert set(smoke.zoo.archs) <= set(cpu.zoo.archs) <= set(gpu.zoo.archs)
    assert smoke.n_seeds <= cpu.n_seeds <= gpu.n_seeds and smoke.ens.n_members <= cpu.ens.n_members <= gpu.ens.n_members


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
    assert set(d) == {f.name for f in dataclasses.fields(Profile)}
    assert d["aug"] == dataclasses.asdict(cfg.aug) and d["cap"]["img_size"] == cfg.cap.img_size
    back = json.loads(json.dumps(d))   # stored in every results record
    tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    kw = {k: SECTIONS[k](**{f: tup(x) for f, x in v.items()}) if k in SECTIONS else tup(v) for k, v in back.items()}
    assert Profile(**kw) == cfg


def test_seeds_count_on_from_the_profile_seed():
    cfg = profile("smoke").with_(seed=7)
    assert cfg.seeds(3) == (7, 8, 9) and cfg.seeds(0) == ()


def test_with_changes_one_field_of_a_section_and_keeps_the_rest():
    cfg = profile("cpu")
    new = cfg.with_(aug=dict(fracs=(0.2, 0.4)), epochs=1)
    assert new.aug.fracs == (0.2, 0.4) and new.aug.steps == cfg.aug.steps and new.epochs == 1
    assert new.prune == cfg.prune and cfg.aug.fracs != (0.2, 0.4)
    with pytest.raises(TypeError):
        cfg.with_(aug=dict(no_such_field=1))


@pytest.mark.parametrize("old, section, field", [("aug_fracs", "aug", "fracs"), ("cap_seeds", "cap", "n_seeds"),
                                                  ("prune_depth", "prune", "blocks"), ("crop_valid_n", "ens", "valid_n"),
                                                  ("zoo_archs", "zoo", "archs"), ("fractions", "transfer", "fractions")])
def test_old_flat_names_still_read_and_set_with_a_warning(old, section, field):
    cfg = profile("cpu")
    with pytest.deprecated_call(match=f"cfg.{section}.{field}"):
        assert getattr(cfg, old) == getattr(getattr(cfg, section), field)
    with pytest.deprecated_call():
        assert getattr(getattr(cfg.with_(**{old: (1,)}), section), field) == (1,)


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_field"):
        profile("smoke").no_such_field


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_sets_every_section_field(name):
    for section, cls in SECTIONS.items():   # no defaults: a field a profile forgot would not construct
        assert isinstance(getattr(PROFILES[name], section), cls)
    assert all(f.default is dataclasses.MISSING for cls in (Profile, *SECTIONS.values()) for f in dataclasses.fields(cls))

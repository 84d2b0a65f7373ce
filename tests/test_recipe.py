"""Tests for convtips_lib.topics.recipe: the recipe's configuration round-trips and refuses bad settings, and it
trains on a tiny generated image folder (plain, over-sampled, without a head-only phase, with tta)."""
import json

import pytest

from convtips_lib.core.profiles import profile
from convtips_lib.topics.recipe import BALANCES, Recipe, recipe_eval, train_recipe

TINY = dict(img_size=32, epochs=1, freeze_epochs=1, bs=4)


def test_recipe_round_trips_through_a_dict_and_a_file(tmp_path):
    r = Recipe(epochs=7, policy="flips+crop+rotation", balance="oversample", tta=True)
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.load(r.save(tmp_path / "recipe.json")) == r
    assert json.loads((tmp_path / "recipe.json").read_text())["epochs"] == 7


@pytest.mark.parametrize("bad, match", [(dict(epochs=0), "epochs"), (dict(img_size=1.5), "img_size"),
                                        (dict(lr=3), "lr"), (dict(policy="wild"), "flips"),
                                        (dict(balance="smote"), "oversample"), (dict(freeze_epochs=-1), "freeze")])
def test_bad_settings_say_what_is_allowed(bad, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**bad)


def test_unknown_settings_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe setting.*epochs"):
        Recipe.from_dict({"epoch": 3})
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read recipe file"):
        Recipe.load(tmp_path / "r.json")
    (tmp_path / "r.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        Recipe.load(tmp_path / "r.json")
    assert BALANCES == ("none", "oversample")


def test_train_recipe_on_a_tiny_folder(tmp_path, image_folder):
    learn = train_recipe(image_folder(tmp_path / "data"), Recipe(**TINY), profile("smoke"))
    assert list(learn.dls.vocab) == ["bright", "dark"]
    assert [r["phase"] for r in learn.history.rows] == ["frozen", "unfrozen"]
    ev = recipe_eval(learn, Recipe(**TINY))
    assert len(ev.y_true) == 4 and 0 <= ev.metrics["balanced_accuracy"] <= 1


def test_train_recipe_over_samples_skips_the_head_phase_and_uses_tta(tmp_path, image_folder):
    root = image_folder(tmp_path / "data", counts=(("bright", 14), ("dark", 4)))
    r = Recipe(**dict(TINY, freeze_epochs=0, balance="oversample", tta=True))
    learn = train_recipe(root, r, profile("smoke"))
    assert [row["phase"] for row in learn.history.rows] == ["fit"]
    assert type(learn.dls.train).__name__ == "WeightedDL"
    assert all(p.requires_grad for p in learn.model.parameters())          # the whole network trained
    assert len(recipe_eval(learn, r).y_pred) == len(learn.dls.valid_ds)

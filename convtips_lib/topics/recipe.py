"""The recipe (lesson 08): the course's tips as one configuration — a pretrained backbone, fine-tuning head first,
augmentation, balanced sampling, test-time augmentation — trained on ELPV or on any folder of images, through the
library's one training path. `convtips train DATA_FOLDER` runs it on a user's folder."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..core.data import folder_dls
from ..core.measure import Evaluation, evaluate
from ..core.store import atomic_write
from ..core.train import fit, make_learner
from .augment import POLICIES, policy_tfms
from .imbalance import oversample_weights

__all__ = ["Recipe", "BALANCES", "train_recipe", "recipe_eval"]

BALANCES = ("none", "oversample")   # lesson 04: plain sampling, or every class drawn equally often


@dataclass(frozen=True)
class Recipe:
    """Every choice of a training recipe; `Recipe()` holds the defaults until lesson 08 measures better ones."""
    arch: str = "efficientnet_lite0"   # lesson 01: a pretrained backbone (the offline ImageNet weights)
    img_size: int = 224                # px, square
    freeze_epochs: int = 1             # lesson 02: the new head alone first (fastai's fine_tune) ...
    epochs: int = 4                    # ... then the whole network
    lr: float = 2e-3                   # peak learning rate (one-cycle, Adam)
    bs: int = 32
    policy: str = "flips"              # lesson 03: augmentation policy (`POLICIES`)
    balance: str = "none"              # lesson 04: `BALANCES`
    tta: bool = False                  # lesson 06: fastai's test-time augmentation at evaluation
    seed: int = 42

    def __post_init__(self):
        for name in ("img_size", "freeze_epochs", "epochs", "bs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "freeze_epochs" else 1):
                raise ValueError(f"recipe {name} must be a whole number >= {0 if name == 'freeze_epochs' else 1}, "
                                 f"got {v!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ValueError(f"recipe lr must be a number between 0 and 1 (e.g. 2e-3), got {self.lr!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"recipe policy {self.policy!r} is unknown: choose one of {', '.join(POLICIES)}")
        if self.balance not in BALANCES:
            raise ValueError(f"recipe balance {self.balance!r} is unknown: choose one of {', '.join(BALANCES)}")

    def to_dict(self) -> dict:
        """The recipe as a plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """A recipe from a dict such as `to_dict` gives; an unknown key is refused, naming the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown recipe setting(s) {', '.join(unknown)}: the settings are {', '.join(known)}")
        return cls(**d)

    def save(self, path) -> Path:
        """Write the recipe as JSON, atomically."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> "Recipe":
        """Read a recipe JSON file written by `save` (or by hand)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read recipe file {path} ({e}): give a JSON file such as Recipe().save() "
                             "writes") from e
        if not isinstance(d, dict):
            raise ValueError(f"recipe file {path} must hold a JSON object of settings, got {type(d).__name__}")
        return cls.from_dict(d)


def _balance_weights(path, cfg, recipe: Recipe, valid_pct: float):
    if recipe.balance == "none":
        return None
    plain = folder_dls(path, cfg, valid_pct, seed=recipe.seed, bs=recipe.bs, img_size=recipe.img_size)
    labels = [str(plain.vocab[int(y)]) for y in plain.train_ds.tls[-1]]   # the training items' classes
    return oversample_weights(labels)


def train_recipe(path, recipe: Recipe, cfg, valid_pct: float = 0.25):
    """Train `recipe` on the image folder `path` (class sub-folders, or train/ and valid/): the fine-tuned
    Learner. One Learner, fastai's fine_tune: every tip is a transform, a sampler or a setting of it."""
    dls = folder_dls(path, cfg, valid_pct, tfms=policy_tfms(recipe.policy, recipe.img_size), seed=recipe.seed,
                     bs=recipe.bs, img_size=recipe.img_size,
                     sampling_weights=_balance_weights(path, cfg, recipe, valid_pct))
    learn = make_learner(dls, recipe.arch, weights="imagenet", depth="head", seed=recipe.seed)
    if recipe.freeze_epochs:
        fit(learn, recipe.epochs, recipe.lr, fine_tune=True, freeze_epochs=recipe.freeze_epochs)
    else:                                   # no head-only phase: the whole network from the first step
        learn.unfreeze()
        fit(learn, recipe.epochs, recipe.lr)
    return learn


def recipe_eval(learn, recipe: Recipe) -> Evaluation:
    """The validation set's `Evaluation`, through fastai's `tta` when the recipe asks for it."""
    if not recipe.tta:
        return evaluate(learn)
    with learn.no_bar(), learn.no_logging():
        probs, y = learn.tta()
    return Evaluation.of(list(learn.dls.vocab), y.numpy(), probs.argmax(1).numpy(), np.asarray(probs))

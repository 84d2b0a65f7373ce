"""Profiles: every size a lesson uses, in one place (smoke / cpu / gpu).

A small core (image size, batch, epochs, learning rate, seeds, architecture, workers) and one frozen section per
lesson that needs sizes of its own (`cfg.aug.fracs`, `cfg.prune.img_size`, `cfg.cap.epochs`). Every profile sets
every field: there are no defaults that a profile would have to override.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace

import torch

from .compat import warn_deprecated

__all__ = ["Profile", "PROFILES", "profile", "ProfileError", "DEFAULT_ARCH", "ZooCfg", "TransferCfg", "AugCfg",
           "ImbCfg", "OptCfg", "EnsCfg", "PruneCfg", "CapCfg"]

DEFAULT_ARCH = "efficientnet_lite0"   # the course's network: offline ImageNet weights, fast on a laptop CPU


class ProfileError(ValueError):
    """A profile name that does not exist."""


class _Section:
    def with_(self, **kw):
        """A copy with some fields changed."""
        return replace(self, **kw)


@dataclass(frozen=True)
class ZooCfg(_Section):
    """Lesson 01: the model-zoo tour."""
    archs: tuple                 # architectures measured


@dataclass(frozen=True)
class TransferCfg(_Section):
    """Lesson 02: freeze depth x data size, cross-validated over every cell preloaded small."""
    fractions: tuple             # fractions of each fold's train cells in the grid (and the SVM learning curves)
    img_size: int                # the grid's image side, px (every cell preloaded, the frozen layers' output cached)
    grid_folds: int              # k of the grid's cross-validation (every cell predicted once; rates per fold)
    steps: int                   # optimizer steps of every grid run, whatever its fraction or regime
    epoch_steps: int             # steps per epoch (the train cells cycled to fill it); steps / epoch_steps epochs,
                                 # split over fine_tune's 2 fits and gradual unfreezing's 3
    lrs: tuple                   # peak learning rates tried per regime that trains more than the head (per fold)
    head_lrs: tuple              # those of the head alone on cached features (cheap: more of them)
    n_seeds: int                 # seeds of every grid run at its chosen rates
    recipes: tuple               # the production recipes compared with the best manual regime (largest fraction)
    folds: int                   # k of the cross-validated SVM learning curves (hand-crafted vs CNN features)
    svm_seeds: int               # draws of each fraction's cells in those curves (the small fractions vary most)


@dataclass(frozen=True)
class AugCfg(_Section):
    """Lesson 03: augmentation policies on a small ConvNet from scratch, cross-validated over every cell."""
    img_size: int                # image side, px (every cell preloaded at this size)
    folds: int                   # k of the k-fold cross-validation (every cell predicted once; rates chosen per
                                 # fold on its own tune cells)
    fracs: tuple                 # the smallest and largest fractions of each fold's train cells compared
    policies: tuple              # the policies compared ('none' first)
    steps: int                   # optimizer steps of every run, whatever its fraction or policy
    epoch_steps: int             # steps per epoch (the train cells cycled to fill it): steps / epoch_steps epochs
    lrs: tuple                   # peak learning rates tried per policy and fraction (Adam, one-cycle; chosen on tune)
    n_seeds: int                 # seeds of every policy run at its chosen rates
    strengths: tuple             # augmentation strengths (x published magnitudes) swept at the smallest fraction


@dataclass(frozen=True)
class ImbCfg(_Section):
    """Lesson 04: imbalanced data."""
    frac: float                  # share of the train cells whose cached features the heads use
    folds: int                   # k of the k-fold cross-validation that judges the binary heads' claims (2,624
                                 # cells, each predicted once; choices on each fold's own tune cells)
    n_seeds: int                 # seeds of every head comparison
    lrs: tuple                   # learning rates tried per remedy (chosen on the tune cells)
    sizes: tuple                 # small and large shares of the harsh train cells (over vs under)
    net_frac: float              # share of the train cells in the whole-network comparison
    net_steps: int               # optimizer steps of every whole-network run


@dataclass(frozen=True)
class OptCfg(_Section):
    """Lesson 05: optimizers on a small ConvNet from scratch, cross-validated over every cell."""
    img_size: int                # image side, px (every cell preloaded at this size)
    folds: int                   # k of the k-fold cross-validation (every cell predicted once; rates chosen per
                                 # fold on its own tune cells)
    optimizers: tuple            # optimizers swept (the claims compare sgd and adam)
    epochs: int                  # epochs of every run (the same steps for every optimizer)
    decades: tuple               # lr sweep, decades around each optimizer's default (chosen on the tune cells)
    n_seeds: int                 # seeds of the final comparison at each optimizer's chosen rates
    converge_epochs: int         # epochs of the constant-rate runs that count steps to the loss target
    loss_target: float           # training loss (cross-entropy) whose first crossing counts as converged (the
                                 # class prior's is 0.58); a run that misses it in converge_epochs is censored
    init_scales: tuple           # initial-weight scales besides 1 (SGD's reliance on initialisation)


@dataclass(frozen=True)
class EnsCfg(_Section):
    """Lesson 06: ensembles and multi-crop."""
    archs: tuple                 # the pretrained bodies whose cached features the members' heads train on
    n_members: int               # members of the ensemble of heads: one per body of `archs`, then its first's seeds
    folds: int                   # k of the k-fold cross-validation of the members (every cell predicted once)
    lrs: tuple                   # learning rates tried per member and fold (chosen on the fold's tune cells)
    valid_n: int                 # test cells in the multi-crop and cost comparison (0: all)


@dataclass(frozen=True)
class PruneCfg(_Section):
    """Lesson 07: pruning networks trained from scratch."""
    img_size: int                # image side, px
    widths: tuple                # channels of the four stages
    blocks: int                  # removable blocks per stage
    frac: float                  # share of the train cells (the tune cells held out)
    epochs: int                  # epochs of training from scratch (both networks)
    lrs: tuple                   # peak learning rates (Adam, one-cycle) tried for each network (chosen on tune)
    ft_div: float                # fine-tuning after pruning runs at the training lr / ft_div
    ratio: float                 # share of channels removed in the end
    steps: int                   # prune -> fine-tune steps to get there
    ft_epochs: int               # fine-tuning epochs after each step
    block_epochs: int            # retraining epochs after removing a block


@dataclass(frozen=True)
class CapCfg(_Section):
    """Lesson 08: the capstone recipe, its ablation and the deployed model."""
    img_size: int                # image side of the full recipe, px (cpu: chosen on tune by bench/frontier.py)
    epochs: int                  # whole-network epochs of the full recipe at most (after one head epoch): a budget;
                                 # the epoch kept is the one the 394 tune cells score best
    frac: float                  # share of the 1,574 train cells the full recipe uses
    abl_img_size: int            # image side of every ablation run, px
    abl_epochs: int              # whole-network epochs of every ablation run at most (after one head epoch)
    abl_frac: float              # share of the 1,574 train cells of every ablation run
    n_seeds: int                 # seeds of every ablation configuration (>= 2: the ensemble averages them)
    valid_n: int                 # test cells used (0: all 656)
    tune_n: int                  # tune cells used (0: all 394); fewer only where a profile saves time (smoke)
    prune_ratio: float           # share of channels pruned from the final model for deployment
    prune_epochs: int            # fine-tuning epochs after pruning (at lr / prune.ft_div)
    prune_distill: bool          # the fine-tuning distils from the unpruned recipe (`Distill`); cpu: chosen on the
                                 # tune cells by bench/prune_recover.py


SECTIONS = {"zoo": ZooCfg, "transfer": TransferCfg, "aug": AugCfg, "imb": ImbCfg, "opt": OptCfg, "ens": EnsCfg,
            "prune": PruneCfg, "cap": CapCfg}
# the flat names of profiles before the sections (old name -> section, field); they still read, with a warning
_OLD = {"zoo_archs": ("zoo", "archs"), "fractions": ("transfer", "fractions"), "n_members": ("ens", "n_members"),
        "crop_valid_n": ("ens", "valid_n"), "prune_depth": ("prune", "blocks"),
        **{f"{s}_{f.name}": (s, f.name) for s in ("aug", "imb", "opt", "prune", "cap")
           for f in fields(SECTIONS[s]) if f.name != "n_seeds"},
        **{f"{s}_seeds": (s, "n_seeds") for s in ("imb", "opt", "cap")}}


@dataclass(frozen=True)
class Profile:
    """All sizes of one run: the core every lesson shares, and one section per lesson (`cfg.aug`, `cfg.cap`, ...)."""
    name: str
    img_size: int                # side of the square input image, px
    bs: int                      # batch size
    epochs: int                  # epochs of one training run
    lr: float                    # peak learning rate of one-cycle training
    train_frac: float            # fraction of the training split a single run uses
    n_seeds: int                 # repeats over seeds where a lesson measures spread
    latency_reps: int            # timed forward passes per latency figure
    head_epochs: int             # epochs of a shallow head trained on cached features
    valid_n: int                 # test cells that loaders with tune cells judge on (0: all 656); fewer only where
                                 # a profile decides nothing and saves time (smoke)
    tune_n: int                  # tune cells they choose on (0: all 394)
    decides_claims: bool         # whether this profile is large enough to decide a lesson's claims
    seed: int                    # the first seed; `seeds(n)` counts on from it
    num_workers: int             # DataLoader worker processes
    cell_timeout: int            # `convtips run`: seconds one cell may take
    arch: str                    # the course's network (a registry name)
    zoo: ZooCfg
    transfer: TransferCfg
    aug: AugCfg
    imb: ImbCfg
    opt: OptCfg
    ens: EnsCfg
    prune: PruneCfg
    cap: CapCfg

    def seeds(self, n: int) -> tuple:
        """`n` seeds counted from the profile's seed: (seed, seed + 1, ...)."""
        return tuple(range(self.seed, self.seed + n))

    def as_dict(self) -> dict:
        """The profile as a plain nested dict (for results JSON)."""
        return asdict(self)

    def with_(self, **kw) -> "Profile":
        """A copy with some fields changed: `cfg.with_(epochs=1)`, a section's fields by a dict
        (`cfg.with_(aug=dict(fracs=(0.1,)))`) or a whole section."""
        out = {}
        for k, v in kw.items():
            if k in _OLD:
                s, f = _old_name(k)
                out.setdefault(s, {})[f] = v
            elif k in SECTIONS and isinstance(v, dict):
                out.setdefault(k, {}).update(v)
            else:
                out[k] = v
        return replace(self, **{k: getattr(self, k).with_(**v) if k in SECTIONS and isinstance(v, dict) else v
                                for k, v in out.items()})

    def __getattr__(self, name: str):
        if name in _OLD:                 # only reached for names the dataclass does not have
            s, f = _old_name(name)
            return getattr(getattr(self, s), f)
        raise AttributeError(f"profile has no field {name!r}")


def _old_name(name: str) -> tuple:
    s, f = _OLD[name]
    warn_deprecated(f"cfg.{name} is deprecated: use cfg.{s}.{f}", stacklevel=4)
    return s, f


_ZOO_SMALL = ("resnet18", "resnet34", "resnet50", "mobilenetv3_large_100", "tf_efficientnet_lite0",
              "tf_efficientnet_lite1", "tf_efficientnet_lite2", "convnext_tiny", "vgg16")

_LR_DECADES = (-1.5, -1.125, -0.75, -0.375, 0, 0.375, 0.75, 1.125, 1.5)   # 9 rates over 3 decades
_ENS_ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")   # the offline bodies

PROFILES = {
    "smoke": Profile(
        "smoke", img_size=64, bs=64, epochs=1, lr=3e-3, train_frac=0.25, n_seeds=1, latency_reps=2, head_epochs=3,
        valid_n=128, tune_n=64,   # of the 656 test and 394 tune cells: smoke decides nothing, so it predicts fewer
        decides_claims=False, seed=42, num_workers=0, cell_timeout=600, arch=DEFAULT_ARCH,
        zoo=ZooCfg(archs=_ZOO_SMALL[:5] + ("vgg16",)),
        transfer=TransferCfg(fractions=(0.02, 0.04, 0.06), img_size=32, grid_folds=2, steps=2, epoch_steps=1,
                             lrs=(3e-3,), head_lrs=(1e-2,), n_seeds=1, recipes=("fine_tune (fastai)",), folds=2,
                             svm_seeds=1),
        aug=AugCfg(img_size=32, folds=2, fracs=(0.1, 0.25), policies=("none", "flips+crop+rotation"), steps=5,
                   epoch_steps=5, lrs=(1e-2,), n_seeds=1, strengths=(0, 1, 2)),
        imb=ImbCfg(frac=0.25, folds=2, n_seeds=1, lrs=(1e-2,), sizes=(0.3, 1.0), net_frac=0.1, net_steps=2),
        opt=OptCfg(img_size=32, folds=2, optimizers=("sgd", "adam"), epochs=2, decades=(-0.5, 0.5), n_seeds=1,
                   converge_epochs=1, loss_target=0.5, init_scales=(4.0,)),
        ens=EnsCfg(archs=("efficientnet_lite0", "efficientnet_lite1"), n_members=4, folds=2, lrs=(1e-2,), valid_n=96),
        prune=PruneCfg(img_size=32, widths=(8, 16, 32, 64), blocks=1, frac=0.25, epochs=2, lrs=(3e-3,), ft_div=3.0,
                       ratio=0.6, steps=2, ft_epochs=1, block_epochs=1),
        cap=CapCfg(img_size=32, epochs=1, frac=0.05, abl_img_size=32, abl_epochs=1, abl_frac=0.05, n_seeds=1,
                   valid_n=64, tune_n=32, prune_ratio=0.3, prune_epochs=1, prune_distill=True)),
    "cpu": Profile(
        "cpu", img_size=112, bs=32, epochs=2, lr=2e-3, train_frac=0.5, n_seeds=1, latency_reps=5, head_epochs=5,
        valid_n=0, tune_n=0,
        decides_claims=True, seed=42, num_workers=0, cell_timeout=3600, arch=DEFAULT_ARCH,
        zoo=ZooCfg(archs=_ZOO_SMALL),
        transfer=TransferCfg(fractions=(0.05, 0.2, 1.0), img_size=48, grid_folds=2, steps=68, epoch_steps=34,
                             lrs=(3e-3,), head_lrs=(3e-3, 1e-2, 3e-2), n_seeds=1, recipes=("fine_tune (fastai)",),
                             folds=5, svm_seeds=3),   # the body's regimes cost ~40 s a fold at 48 px: one rate, one seed
        aug=AugCfg(img_size=32, folds=2, fracs=(0.25, 1.0), policies=("none", "flips", "flips+crop+rotation"),
                   steps=400, epoch_steps=40, lrs=(3e-3, 1e-2), n_seeds=2, strengths=(0, 0.5, 1, 2, 4)),   # 12 min
        imb=ImbCfg(frac=1.0, folds=5, n_seeds=3, lrs=(3e-3, 1e-2, 3e-2), sizes=(0.2, 1.0), net_frac=0.5, net_steps=40),
        opt=OptCfg(img_size=32, folds=2, optimizers=("sgd", "adam"), epochs=30, decades=_LR_DECADES, n_seeds=3,
                   converge_epochs=10, loss_target=0.45, init_scales=(0.25, 4.0)),   # 30 epochs x 9 rates: 12 min
        ens=EnsCfg(archs=_ENS_ARCHS, n_members=5, folds=5, lrs=(3e-3, 1e-2, 3e-2), valid_n=0),
        prune=PruneCfg(img_size=64, widths=(32, 64, 128, 256), blocks=2, frac=1.0, epochs=8, lrs=(1e-3, 3e-3),
                       ft_div=3.0, ratio=0.6, steps=3, ft_epochs=2, block_epochs=1),
        cap=CapCfg(img_size=160, epochs=8, frac=1.0, abl_img_size=72, abl_epochs=2, abl_frac=0.4, n_seeds=2,
                   valid_n=0, tune_n=0, prune_ratio=0.3, prune_epochs=2, prune_distill=True)),   # ablation at 72 px on 40 %: in 30 min
    "gpu": Profile(
        "gpu", img_size=224, bs=64, epochs=10, lr=2e-3, train_frac=1.0, n_seeds=3, latency_reps=20, head_epochs=20,
        valid_n=0, tune_n=0,
        decides_claims=True, seed=42, num_workers=4, cell_timeout=3600, arch=DEFAULT_ARCH,
        zoo=ZooCfg(archs=_ZOO_SMALL),
        transfer=TransferCfg(fractions=(0.05, 0.2, 0.5, 1.0), img_size=128, grid_folds=5, steps=600,
                             epoch_steps=60, lrs=(1e-3, 3e-3, 1e-2), head_lrs=(1e-3, 3e-3, 1e-2, 3e-2), n_seeds=3,
                             recipes=("fine_tune (fastai)", "gradual unfreezing"), folds=5, svm_seeds=5),
        aug=AugCfg(img_size=64, folds=5, fracs=(0.1, 0.3, 1.0), policies=("none", "flips", "flips+crop+rotation",
                   "everything"), steps=2000, epoch_steps=50, lrs=(1e-3, 3e-3, 1e-2), n_seeds=3,
                   strengths=(0, 0.5, 1, 1.5, 2, 3, 4)),
        imb=ImbCfg(frac=1.0, folds=5, n_seeds=5, lrs=(3e-3, 1e-2, 3e-2), sizes=(0.2, 1.0), net_frac=1.0, net_steps=300),
        opt=OptCfg(img_size=64, folds=5, optimizers=("sgd", "adam", "adamw", "rmsprop", "adadelta"), epochs=60,
                   decades=_LR_DECADES, n_seeds=5, converge_epochs=20, loss_target=0.3, init_scales=(0.25, 4.0)),
        ens=EnsCfg(archs=_ENS_ARCHS, n_members=7, folds=5, lrs=(3e-3, 1e-2, 3e-2), valid_n=0),
        prune=PruneCfg(img_size=128, widths=(32, 64, 128, 256), blocks=2, frac=1.0, epochs=30, lrs=(3e-4, 1e-3, 3e-3),
                       ft_div=3.0, ratio=0.6, steps=5, ft_epochs=5, block_epochs=3),
        cap=CapCfg(img_size=224, epochs=12, frac=1.0, abl_img_size=224, abl_epochs=8, abl_frac=1.0, n_seeds=3,
                   valid_n=0, tune_n=0, prune_ratio=0.3, prune_epochs=3, prune_distill=True)),
}


def profile(name: str | None = None) -> Profile:
    """The profile `name`, else `$CONVTIPS_PROFILE`, else 'gpu' when CUDA is available and 'cpu' otherwise;
    `$CONVTIPS_SEED` (an integer) replaces its seed."""
    name = name or os.environ.get("CONVTIPS_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    key = name.strip().lower()
    if key not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} "
                           f"(set CONVTIPS_PROFILE=cpu, or pass --profile cpu to convtips, or profile('cpu'))")
    seed = os.environ.get("CONVTIPS_SEED", "").strip()
    if not seed:
        return PROFILES[key]
    if not seed.isdecimal() or int(seed) >= 2 ** 32:   # numpy's seed range
        raise ProfileError(f"CONVTIPS_SEED must be an integer from 0 to 2**32 - 1, got {seed!r}: e.g. CONVTIPS_SEED=1")
    return PROFILES[key].with_(seed=int(seed))

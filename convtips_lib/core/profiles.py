"""Profiles: every size a lesson uses, in one place (smoke / cpu / gpu)."""
from __future__ import annotations

import os
from dataclasses import dataclass, asdict, replace

import torch

__all__ = ["Profile", "PROFILES", "profile", "ProfileError"]


class ProfileError(ValueError):
    """A profile name that does not exist."""


@dataclass(frozen=True)
class Profile:
    """All sizes of one run: images (px), data (fractions of the training split), training and ensembles."""
    name: str
    img_size: int            # side of the square input image, px
    bs: int                  # batch size
    epochs: int              # epochs of one training run
    lr: float                # peak learning rate of one-cycle training
    train_frac: float        # fraction of the training split a single run uses
    fractions: tuple         # training-set fractions for grids and learning curves
    n_seeds: int             # repeats over seeds where a lesson measures spread
    n_members: int           # members of an ensemble
    zoo_archs: tuple         # architectures measured in the model-zoo tour
    latency_reps: int        # timed forward passes per latency figure
    head_epochs: int         # epochs of a shallow head trained on cached features
    decides_claims: bool     # whether this profile is large enough to decide a lesson's claims
    seed: int = 42
    num_workers: int = 0
    aug_fracs: tuple = (0.1, 0.5)        # lesson 03: the small and large training fractions of the policy comparison
    aug_epochs: tuple = (5, 3)           # lesson 03: epochs at each of aug_fracs (every policy gets the same steps)
    aug_strengths: tuple = (0, 0.5, 1, 2.5)   # lesson 03: augmentation strengths (x published magnitudes) swept
    imb_frac: float = 1.0            # lesson 04: share of the training split whose cached features the heads use
    imb_seeds: int = 1               # lesson 04: seeds of every head comparison
    imb_lrs: tuple = (1e-2,)         # lesson 04: learning rates tried per remedy (chosen on held-out training data)
    imb_sizes: tuple = (0.2, 1.0)    # lesson 04: small and large shares of the harsh training set (over vs under)
    imb_net_frac: float = 0.5        # lesson 04: share of the training split in the whole-network comparison
    imb_net_steps: int = 40          # lesson 04: optimizer steps of every whole-network run
    opt_img_size: int = 32           # lesson 05: image side (px) for the small network trained from scratch
    opt_frac: float = 1.0            # lesson 05: share of the training split
    opt_epochs: int = 6              # lesson 05: epochs of every run (the same budget for every optimizer)
    opt_decades: tuple = (-1, -0.5, 0, 0.5, 1)   # lesson 05: lr sweep, decades around each optimizer's default
    opt_seeds: int = 2               # lesson 05: seeds of the final comparison at each optimizer's best lr
    crop_valid_n: int = 0            # lesson 06: validation cells in the multi-crop and cost comparison (0: all)
    prune_img_size: int = 64         # lesson 07: image side (px) of the small networks trained from scratch
    prune_widths: tuple = (32, 64, 128, 256)   # lesson 07: channels of the four stages
    prune_depth: int = 2             # lesson 07: removable blocks per stage
    prune_frac: float = 1.0          # lesson 07: share of the training split
    prune_epochs: int = 8            # lesson 07: epochs of training from scratch (both networks)
    prune_lrs: tuple = (1e-3, 3e-3)  # lesson 07: peak learning rates (Adam, one-cycle) tried for each network
    prune_ft_div: float = 3.0        # lesson 07: fine-tuning after pruning runs at the training lr / prune_ft_div
    prune_ratio: float = 0.6         # lesson 07: share of channels removed in the end
    prune_steps: int = 3             # lesson 07: prune -> fine-tune steps to get there
    prune_ft_epochs: int = 2         # lesson 07: fine-tuning epochs after each step
    prune_block_epochs: int = 1      # lesson 07: retraining epochs after removing a block
    cap_img_size: int = 160          # lesson 08: image side (px) of the full recipe (the cpu target: >= 88 % in 15 min)
    cap_epochs: int = 8              # lesson 08: whole-network epochs of the full recipe (after one head epoch)
    cap_frac: float = 1.0            # lesson 08: share of the training split the full recipe uses
    cap_abl_img_size: int = 96       # lesson 08: image side (px) of every ablation run
    cap_abl_epochs: int = 2          # lesson 08: whole-network epochs of every ablation run (after one head epoch)
    cap_abl_frac: float = 0.5        # lesson 08: share of the training split of every ablation run
    cap_seeds: int = 2               # lesson 08: seeds of every ablation configuration (>= 2: the ensemble averages them)
    cap_valid_n: int = 0             # lesson 08: validation cells used (0: all 656)
    cap_prune_ratio: float = 0.3     # lesson 08: share of channels pruned from the final model for deployment
    cap_prune_epochs: int = 2        # lesson 08: fine-tuning epochs after pruning (at lr / prune_ft_div)
    cell_timeout: int = 3600         # `convtips run`: seconds one cell may take (lesson 08's cpu ablation: ~20 min)

    def as_dict(self) -> dict:
        """The profile as a plain dict (for results JSON)."""
        return asdict(self)

    def with_(self, **kw) -> "Profile":
        """A copy with some fields changed (e.g. `cfg.with_(epochs=1)`)."""
        return replace(self, **kw)


_ZOO_SMALL = ("resnet18", "resnet34", "resnet50", "mobilenetv3_large_100", "tf_efficientnet_lite0",
              "tf_efficientnet_lite1", "tf_efficientnet_lite2", "convnext_tiny", "vgg16")

PROFILES = {
    "smoke": Profile("smoke", img_size=64, bs=64, epochs=1, lr=3e-3, train_frac=0.25,
                     fractions=(0.05, 0.2), n_seeds=1, n_members=2, zoo_archs=_ZOO_SMALL[:5] + ("vgg16",),
                     latency_reps=2, head_epochs=3, decides_claims=False,
                     aug_fracs=(0.05, 0.1), aug_epochs=(1, 1), aug_strengths=(0, 1),
                     imb_frac=0.25, imb_seeds=1, imb_lrs=(1e-2,), imb_sizes=(0.3, 1.0), imb_net_frac=0.1,
                     imb_net_steps=2, opt_img_size=32, opt_frac=0.25, opt_epochs=2, opt_decades=(0,),
                     opt_seeds=1, crop_valid_n=96, prune_img_size=32, prune_widths=(8, 16, 32, 64), prune_depth=1,
                     prune_frac=0.25, prune_epochs=2, prune_lrs=(3e-3,), prune_steps=2, prune_ft_epochs=1,
                     prune_block_epochs=1, cap_img_size=32, cap_epochs=1, cap_frac=0.05, cap_abl_img_size=32,
                     cap_abl_epochs=1, cap_abl_frac=0.05, cap_seeds=1, cap_valid_n=96, cap_prune_epochs=1,
                     cell_timeout=600),
    "cpu": Profile("cpu", img_size=112, bs=32, epochs=2, lr=2e-3, train_frac=0.5,
                   fractions=(0.05, 0.2, 1.0), n_seeds=1, n_members=3, zoo_archs=_ZOO_SMALL,
                   latency_reps=5, head_epochs=5, decides_claims=True,
                   aug_fracs=(0.1, 0.3), aug_epochs=(5, 3), aug_strengths=(0, 1, 2.5),
                   imb_frac=1.0, imb_seeds=3, imb_lrs=(3e-3, 1e-2, 3e-2), imb_sizes=(0.2, 1.0), imb_net_frac=0.5,
                   imb_net_steps=40, opt_img_size=32, opt_frac=1.0, opt_epochs=6, opt_decades=(-1, -0.5, 0, 0.5, 1),
                   opt_seeds=2, prune_img_size=64, prune_epochs=8, prune_steps=3,
                   prune_ft_epochs=2),
    "gpu": Profile("gpu", img_size=224, bs=64, epochs=10, lr=2e-3, train_frac=1.0,
                   fractions=(0.05, 0.2, 0.5, 1.0), n_seeds=3, n_members=5, zoo_archs=_ZOO_SMALL,
                   latency_reps=20, head_epochs=20, decides_claims=True, num_workers=4,
                   aug_fracs=(0.1, 1.0), aug_epochs=(20, 5), aug_strengths=(0, 0.5, 1, 1.5, 2, 3, 4),
                   imb_frac=1.0, imb_seeds=5, imb_lrs=(3e-3, 1e-2, 3e-2), imb_sizes=(0.2, 1.0), imb_net_frac=1.0,
                   imb_net_steps=300, opt_img_size=64, opt_frac=1.0, opt_epochs=30,
                   opt_decades=(-1.5, -1, -0.5, 0, 0.5, 1, 1.5), opt_seeds=3, prune_img_size=128, prune_epochs=30,
                   prune_lrs=(3e-4, 1e-3, 3e-3), prune_steps=5, prune_ft_epochs=5, prune_block_epochs=3,
                   cap_img_size=224, cap_epochs=12, cap_abl_img_size=224, cap_abl_epochs=8, cap_abl_frac=1.0, cap_seeds=3,
                   cap_prune_epochs=3),
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

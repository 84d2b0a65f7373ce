"""The course's Callbacks in a plain fastai Learner, built the usual way (`vision_learner` on an `ImageDataLoaders`
folder, fastai's own Adam, its progress bar and Recorder): each trains a couple of epochs and does what it says.
Tiny images (32 px) and a random-init resnet18, so the whole file takes seconds."""
import numpy as np
import pytest
import torch
from fastai.optimizer import RMSProp
from fastai.vision.all import (ImageDataLoaders, Normalize, Resize, Transform, TensorImage, accuracy, imagenet_stats,
                               resnet18, vision_learner)
from fastai.callback.core import Callback

from convtips_lib.core.data import attach_tune
from convtips_lib.core.train import History, ValidateLast
from convtips_lib.studies.lesson03 import StepTimer
from convtips_lib.topics.imbalance import MinorityAugment
from convtips_lib.topics.optim import SwitchOptimizer
from convtips_lib.topics.recipe import BestOnTune


@pytest.fixture(scope="module")
def dls(tmp_path_factory, image_folder):
    """16 images of two classes (bright, dark): 12 to train on in 3 batches of 4, 4 to validate; normalised."""
    folder = image_folder(tmp_path_factory.mktemp("interop") / "data")
    return ImageDataLoaders.from_folder(folder, valid_pct=0.25, seed=0, item_tfms=Resize(32), bs=4, num_workers=0,
                                        batch_tfms=Normalize.from_stats(*imagenet_stats))


def _plain(dls, cbs, **kw):
    """fastai's usual Learner: vision_learner's defaults (opt_func=Adam, fastai's own), random weights, seeded."""
    torch.manual_seed(0)
    return vision_learner(dls, resnet18, pretrained=False, metrics=accuracy, cbs=cbs, **kw)


def test_switch_optimizer_carries_fastai_adams_step_size_over_to_sgd(dls):
    switch = SwitchOptimizer(1)
    learn = _plain(dls, [switch])
    adam = learn.opt_func
    learn.fit_one_cycle(2, 1e-3)
    assert switch.switched_at == 1 and np.isfinite(switch.lr_scale) and switch.lr_scale > 0
    assert type(learn.opt.opt) is torch.optim.SGD and len(learn.opt.param_groups) == len(learn.splitter(learn.model))
    assert learn.opt_func is adam                          # the Learner keeps its own opt_func for the next fit
    assert np.isfinite(learn.recorder.losses[-1])
    learn.get_preds()                                      # before_fit / before_epoch without training: no effect
    assert switch.switched_at == 1


def test_switch_optimizer_refuses_an_optimizer_without_adams_state_before_the_first_step(dls):
    learn = _plain(dls, [SwitchOptimizer(1)], opt_func=RMSProp)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match="fastai's Optimizer with rms_prop_step: use Adam .* or pass lr_scale="):
        learn.fit(2, 1e-3)
    assert all(torch.equal(a, p) for a, p in zip(before, learn.model.parameters()))
    fixed = SwitchOptimizer(1, lr_scale=10.0)              # a given scale needs no Adam state
    _plain(dls, [fixed], opt_func=RMSProp).fit(2, 1e-3)
    assert fixed.switched_at == 1 and fixed.lr_scale == 10.0


class _Batches(Callback):
    """The training batches as a Callback of order `order` sees them: (x, y) plain tensors."""

    def __init__(self, order):
        self.order, self.seen = order, []

    def before_batch(self):
        if self.training:
            self.seen.append((self.xb[0].as_subclass(torch.Tensor).clone(), self.yb[0].as_subclass(torch.Tensor)))


class _Blank(Transform):
    """A training-time batch transform that turns every image black, so its effect cannot be missed."""
    split_idx = 0

    def encodes(self, x: TensorImage):
        return x * 0


def test_minority_augment_changes_only_the_target_class_and_renormalises(dls):
    dark = list(dls.vocab).index("dark")
    before, after = _Batches(MinorityAugment.order - 1), _Batches(MinorityAugment.order + 1)
    learn = _plain(dls, [before, MinorityAugment([_Blank()], [dark]), after])
    learn.fit(2, 1e-3)
    assert len(after.seen) == 2 * len(dls.train) and np.isfinite(learn.recorder.losses[-1])
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in imagenet_stats)
    for (x0, y), (x1, _) in zip(before.seen, after.seen):
        rare = y == dark
        assert torch.equal(x1[~rare], x0[~rare])                                    # the others pass unchanged
        assert torch.allclose(x1[rare], ((0 - mean) / std).expand_as(x1[rare]), atol=1e-5)   # black, normalised
    assert any((y == dark).any() for _, y in before.seen)


def test_history_records_every_epochs_validation_probabilities(dls):
    learn = _plain(dls, [History()])
    learn.fit(2, 1e-3)
    hist = learn.history
    n_valid = len(dls.valid_ds)
    assert len(hist.rows) == 2 and [r["epoch"] for r in hist.rows] == [1, 2]
    assert len(hist.probs) == 2 and all(p.shape == (n_valid, 2) for p in hist.probs)
    assert np.allclose(hist.probs[-1].sum(1), 1, atol=1e-5) and (hist.preds[-1] == hist.probs[-1].argmax(1)).all()
    labels = [int(y) for _, y in dls.valid_ds]
    assert list(hist.y_true) == labels
    assert hist.rows[-1]["accuracy"] == pytest.approx(float((hist.preds[-1] == hist.y_true).mean()))
    learn.get_preds()                                      # predictions outside a fit add no epoch
    assert len(hist.rows) == 2


def test_best_on_tune_keeps_the_weights_of_the_best_tune_epoch(dls):
    best = BestOnTune()
    learn = _plain(attach_tune(dls, dls.valid_ds.items), [History(), best])
    try:
        learn.fit(2, 1e-3)
    finally:
        del dls.tune                                       # the module's loaders stay as they were
    assert len(learn.history.tune_probs) == 2 and best.kept in (1, 2)
    assert best.restore(learn.model) == best.kept
    assert all(torch.equal(v, best.weights[k]) for k, v in learn.model.state_dict().items())


def test_validate_last_validates_the_last_epoch_only(dls):
    learn = _plain(dls, [History(), ValidateLast()])
    learn.fit(2, 1e-3)
    assert len(learn.history.probs) == 1 and [r["accuracy"] is None for r in learn.history.rows] == [True, False]


def test_step_timer_times_every_training_step_and_the_waits_between(dls):
    timer = StepTimer()
    _plain(dls, [timer]).fit(2, 1e-3)
    assert len(timer.step_s) == 2 * len(dls.train) and len(timer.wait_s) == 2 * (len(dls.train) - 1)
    assert all(s > 0 for s in timer.step_s) and all(w >= 0 for w in timer.wait_s)

"""Measurement: classification metrics, confusion matrices, parameters, FLOPs and latency."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score
from torch import nn

__all__ = ["Evaluation", "evaluate", "classification_metrics", "count_params", "count_flops", "latency", "noise_band"]


def classification_metrics(y_true, y_pred) -> dict:
    """Accuracy, balanced accuracy and macro F1 (fractions in [0, 1])."""
    return dict(accuracy=float(accuracy_score(y_true, y_pred)),
                balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)),
                f1_macro=float(f1_score(y_true, y_pred, average="macro")))


@dataclass
class Evaluation:
    """Predictions on one dataset: labels, probabilities (N, C), metrics and confusion matrix (C, C)."""
    vocab: list
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    metrics: dict
    confusion: np.ndarray

    @property
    def per_class_recall(self) -> dict:
        """Recall of each class (the diagonal of the row-normalised confusion matrix)."""
        rows = self.confusion.sum(1).clip(min=1)
        return {c: float(self.confusion[i, i] / rows[i]) for i, c in enumerate(self.vocab)}


def evaluate(learn, dl=None) -> Evaluation:
    """Evaluate a fastai Learner on `dl` (default: its validation set), without progress bars."""
    with learn.no_bar(), learn.no_logging():
        probs, y = learn.get_preds(dl=dl)
    y_true, y_pred = y.numpy(), probs.argmax(1).numpy()
    vocab = list(learn.dls.vocab)
    return Evaluation(vocab, y_true, y_pred, probs.numpy(), classification_metrics(y_true, y_pred),
                      confusion_matrix(y_true, y_pred, labels=range(len(vocab))))


def noise_band(p: float, n: int, z: float = 2.0) -> float:
    """`z` binomial standard errors of a rate `p` measured on `n` samples: differences below it are noise."""
    return z * float(np.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)))


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, size: int, bs: int = 1) -> int:
    """FLOPs of one forward pass on a (bs, 3, size, size) batch, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(bs, 3, size, size, device=next(model.parameters()).device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


def latency(model: nn.Module, size: int, bs: int = 1, reps: int = 5, warmup: int = 1) -> dict:
    """Median forward time: ms per batch, ms per image and images/s on (bs, 3, size, size) inputs."""
    dev = next(model.parameters()).device
    x = torch.randn(bs, 3, size, size, device=dev)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + reps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    ms = 1000 * float(np.median(times))
    return dict(ms_per_batch=ms, ms_per_image=ms / bs, images_per_s=1000 * bs / ms)

"""convtips: the shared library behind every lesson (README maps lessons to modules)."""
import warnings as _w

_w.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

from .profiles import Profile, PROFILES, profile, ProfileError  # noqa: E402
from .env import in_colab, device, gpu_hint, environment, seed_everything  # noqa: E402
from .data import (TASKS, elpv_frame, subsample, elpv_dls, folder_dls, untar_dls, check_images,  # noqa: E402
                   BadImageError, DataUnreachableError)
from .models import (OFFLINE_WEIGHTS, pretrained, param_groups, freeze, unfreeze, list_archs, load_weights,  # noqa: E402
                     sha256sum, UnknownModelError, HubUnreachableError, WeightsChecksumError)
from .train import make_learner, fit, history  # noqa: E402
from .measure import evaluate, classification_metrics, count_params, count_flops, latency  # noqa: E402
from .results import Results, load_results  # noqa: E402
from .plots import plot_history, plot_confusion, show_images, plot_bars  # noqa: E402
from .imagenet import imagenet_labels, topk  # noqa: E402
from .widgets import show_cells, dataset_browser  # noqa: E402
from .exercises import check_valid_defectives, check_poly_defect_rate  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Profile", "PROFILES", "profile", "ProfileError", "in_colab", "device", "gpu_hint", "environment",
           "seed_everything", "TASKS", "elpv_frame", "subsample", "elpv_dls", "folder_dls", "untar_dls",
           "check_images", "BadImageError", "DataUnreachableError", "OFFLINE_WEIGHTS", "pretrained", "param_groups",
           "freeze", "unfreeze", "list_archs", "load_weights", "sha256sum", "UnknownModelError",
           "HubUnreachableError", "WeightsChecksumError", "make_learner", "fit", "history", "evaluate",
           "classification_metrics", "count_params", "count_flops", "latency", "Results", "load_results", "plot_history",
           "plot_confusion", "show_images", "plot_bars", "imagenet_labels", "topk", "show_cells", "dataset_browser",
           "check_valid_defectives", "check_poly_defect_rate"]

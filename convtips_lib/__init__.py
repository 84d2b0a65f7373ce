"""convtips: the shared library behind every lesson (README maps lessons to modules)."""
import warnings as _w

_w.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

from .profiles import Profile, PROFILES, profile, ProfileError  # noqa: E402
from .env import in_colab, device, gpu_hint, environment, seed_everything  # noqa: E402
from .data import (TASKS, elpv_frame, subsample, elpv_dls, folder_dls, untar_dls, check_images,  # noqa: E402
                   BadImageError, DataUnreachableError)
from .models import (OFFLINE_WEIGHTS, pretrained, param_groups, freeze, unfreeze, list_archs, load_weights,  # noqa: E402
                     sha256sum, UnknownModelError, HubUnreachableError, WeightsChecksumError)
from .train import make_learner, fit, fit_gradual, history  # noqa: E402
from .measure import evaluate, classification_metrics, count_params, count_flops, latency, noise_band  # noqa: E402
from .results import Results, load_results  # noqa: E402
from .plots import plot_history, plot_confusion, show_images, plot_bars, plot_heatmap, plot_lines  # noqa: E402
from .imagenet import (imagenet_labels, preprocess, topk, SAMPLE_PHOTOS, sample_photo, load_user_image,  # noqa: E402
                       preprocessing_variants, photo_top5, photo_widget)
from .zoo import (family, arch_cost, zoo_table, plot_cost, arch_row, zoo_widget, zoo_counts,  # noqa: E402
                  weights_provenance, unsafe_pickle_demo)
from .blocks import (BasicBlock, InvertedResidual, copy_weights, rebuild, compare_blocks, block_input,  # noqa: E402
                     detail_effects, network_effects)
from .features import (Features, body_stages, split_at, cached_features, fit_head, fit_head_live,  # noqa: E402
                       fit_logreg)
from .handcrafted import handcrafted_features, svm_baseline  # noqa: E402
from .transfer import (REGIMES, train_regime, run_regime, freeze_grid, best_regimes, freeze_rule,  # noqa: E402
                       fraction_masks, linear_curve, quick_transfer, transfer_widget)
from .widgets import show_cells, dataset_browser  # noqa: E402
from .exercises import (check_valid_defectives, check_poly_defect_rate, check_param_count,  # noqa: E402
                        check_cat_preprocessing, check_best_small_data_regime, check_head_only_params)

__version__ = "0.1.0"
__all__ = ["Profile", "PROFILES", "profile", "ProfileError", "in_colab", "device", "gpu_hint", "environment",
           "seed_everything", "TASKS", "elpv_frame", "subsample", "elpv_dls", "folder_dls", "untar_dls",
           "check_images", "BadImageError", "DataUnreachableError", "OFFLINE_WEIGHTS", "pretrained", "param_groups",
           "freeze", "unfreeze", "list_archs", "load_weights", "sha256sum", "UnknownModelError",
           "HubUnreachableError", "WeightsChecksumError", "make_learner", "fit", "fit_gradual", "history", "evaluate",
           "classification_metrics", "count_params", "count_flops", "latency", "noise_band", "Results", "load_results",
           "plot_history", "plot_confusion", "show_images", "plot_bars", "plot_heatmap", "plot_lines",
           "imagenet_labels", "preprocess", "topk", "SAMPLE_PHOTOS", "sample_photo", "load_user_image",
           "preprocessing_variants", "photo_top5", "photo_widget",
           "family", "arch_cost", "zoo_table", "plot_cost", "arch_row", "zoo_widget", "zoo_counts",
           "weights_provenance", "unsafe_pickle_demo",
           "BasicBlock", "InvertedResidual", "copy_weights", "rebuild", "compare_blocks", "block_input",
           "detail_effects", "network_effects",
           "Features", "body_stages", "split_at", "cached_features", "fit_head", "fit_head_live", "fit_logreg",
           "handcrafted_features", "svm_baseline",
           "REGIMES", "train_regime", "run_regime", "freeze_grid", "best_regimes", "freeze_rule", "fraction_masks",
           "linear_curve", "quick_transfer", "transfer_widget",
           "show_cells", "dataset_browser",
           "check_valid_defectives", "check_poly_defect_rate", "check_param_count", "check_cat_preprocessing",
           "check_best_small_data_regime", "check_head_only_params"]

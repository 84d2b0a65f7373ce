"""convtips: the shared library behind every lesson (README maps lessons to modules).

Layers, arrows pointing down only: course -> ui -> studies -> topics -> core. The flat namespace `ctl.` that notebooks use
is generated from each module's `__all__` (as timm's `models/__init__.py` does).
"""
import warnings as _w

_w.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

from .core.profiles import *  # noqa: E402,F401,F403
from .core.env import *  # noqa: E402,F401,F403
from .core.store import *  # noqa: E402,F401,F403
from .core.data import *  # noqa: E402,F401,F403
from .core.models import *  # noqa: E402,F401,F403
from .core.surgery import *  # noqa: E402,F401,F403
from .core.train import *  # noqa: E402,F401,F403
from .core.measure import *  # noqa: E402,F401,F403
from .core.results import *  # noqa: E402,F401,F403
from .topics.imagenet import *  # noqa: E402,F401,F403
from .topics.zoo import *  # noqa: E402,F401,F403
from .topics.blocks import *  # noqa: E402,F401,F403
from .topics.features import *  # noqa: E402,F401,F403
from .topics.handcrafted import *  # noqa: E402,F401,F403
from .topics.transfer import *  # noqa: E402,F401,F403
from .topics.augment import *  # noqa: E402,F401,F403
from .topics.imbalance import *  # noqa: E402,F401,F403
from .topics.optim import *  # noqa: E402,F401,F403
from .topics.ensemble import *  # noqa: E402,F401,F403
from .topics.prune import *  # noqa: E402,F401,F403
from .topics.ablation import *  # noqa: E402,F401,F403
from .topics.deploy import *  # noqa: E402,F401,F403
from .topics.recipe import *  # noqa: E402,F401,F403
from .studies.lesson02 import *  # noqa: E402,F401,F403
from .studies.lesson03 import *  # noqa: E402,F401,F403
from .studies.lesson04 import *  # noqa: E402,F401,F403
from .studies.lesson05 import *  # noqa: E402,F401,F403
from .studies.lesson06 import *  # noqa: E402,F401,F403
from .studies.lesson07 import *  # noqa: E402,F401,F403
from .studies.lesson08 import *  # noqa: E402,F401,F403
from .studies.lesson09 import *  # noqa: E402,F401,F403
from .ui.plots import *  # noqa: E402,F401,F403
from .ui.widgets import *  # noqa: E402,F401,F403
from .course.exercises import *  # noqa: E402,F401,F403

MODULES = ("core.profiles", "core.env", "core.store", "core.data", "core.models", "core.surgery", "core.train",
           "core.measure", "core.results", "topics.imagenet", "topics.zoo", "topics.blocks", "topics.features",
           "topics.handcrafted", "topics.transfer", "topics.augment", "topics.imbalance", "topics.optim", "topics.ensemble",
           "topics.prune", "topics.ablation", "topics.deploy", "topics.recipe",
           "studies.lesson02", "studies.lesson03", "studies.lesson04", "studies.lesson05", "studies.lesson06", "studies.lesson07", "studies.lesson08", "studies.lesson09", "ui.plots", "ui.widgets", "course.exercises")


def _public() -> list:
    import importlib
    return [n for m in MODULES for n in importlib.import_module(f"{__name__}.{m}").__all__]


__version__ = "0.2.0"
__all__ = _public()

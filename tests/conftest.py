"""Unit tests only (the repository's conftest.py sets the profile, caches and quiet mode for tests and notebooks).

One torch thread: the unit tests run tiny models, where threads gain little, and on a busy machine (CI, several
jobs on two cores) OpenMP threads that wait for a free core make a forward pass 10-20x slower.
"""
import sys

import torch

torch.set_num_threads(1)


import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def _image_folder(root, counts=(("bright", 8), ("dark", 8)), size=(40, 30)):
    """Class sub-folders of random PNGs, each class a different brightness (learnable in one epoch): `root`."""
    rng = np.random.default_rng(0)
    for c, n in counts:
        (root / c).mkdir(parents=True)
        shade = 200 if c == "bright" else 40
        for i in range(n):
            px = np.clip(rng.normal(shade, 30, (*size[::-1], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder():
    """A function writing a tiny two-class image folder (`bright`, `dark`) under the path it is given."""
    return _image_folder


# ---------------------------------------------------------------- EfficientNet-Lite0, three ways
# Each test module gets its own copy of the module-scoped ones (as when each file had its own fixture).

@pytest.fixture(scope="module")
def lite0_imagenet():
    """EfficientNet-Lite0 with its shipped ImageNet weights and 1000-class head, in eval mode (TF port: BN eps 1e-3,
    'SAME' padding). Shared by a module's tests: do not change it."""
    from convtips_lib.core.models import pretrained
    return pretrained("efficientnet_lite0").eval()


@pytest.fixture(scope="module")
def lite0_pretrained_2class():
    """EfficientNet-Lite0's ImageNet body with a new (random) 2-class head, as transfer learning starts. Shared by
    a module's tests: do not change it."""
    from convtips_lib.core.models import pretrained
    return pretrained("efficientnet_lite0", 2)


@pytest.fixture
def lite0_random_2class():
    """A fresh random-init EfficientNet-Lite0 Classifier with a 2-class head, one per test (freeze tests mutate it)."""
    from convtips_lib.core.models import pretrained
    return pretrained("efficientnet_lite0", 2, weights=None)


# ---------------------------------------------------------------- figures
@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure after each test (pyplot warns past 20 open figures; each holds memory)."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")   # only where a test used pyplot: no import for the others
    if plt is not None:
        plt.close("all")

"""Unit tests only (the repository's conftest.py sets the profile, caches and quiet mode for tests and notebooks).

One torch thread: the unit tests run tiny models, where threads gain little, and on a busy machine (CI, several
jobs on two cores) OpenMP threads that wait for a free core make a forward pass 10-20x slower.
"""
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

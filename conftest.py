"""Test set-up shared by unit tests and nbval: the smoke profile, quiet training, results and caches in temp folders."""
import os
import tempfile

import pytest

os.environ.setdefault("CONVTIPS_PROFILE", "smoke")
os.environ.setdefault("CONVTIPS_QUIET", "1")
os.environ.setdefault("CONVTIPS_RESULTS", os.path.join(tempfile.gettempdir(), "convtips-test-results"))
os.environ.setdefault("CONVTIPS_CACHE", os.path.join(tempfile.gettempdir(), "convtips-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.hookimpl(tryfirst=True)   # before pytest's own hook, which deselects by marker
def pytest_collection_modifyitems(config, items):
    """nbval's lesson cells execute whole notebooks: they count as `slow`, so `pytest -m "not slow"` leaves them out."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)

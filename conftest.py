"""Test set-up shared by unit tests and nbval: the smoke profile, quiet training, results and caches in temp folders."""
import os
import tempfile

os.environ.setdefault("CONVTIPS_PROFILE", "smoke")
os.environ.setdefault("CONVTIPS_QUIET", "1")
os.environ.setdefault("CONVTIPS_RESULTS", os.path.join(tempfile.gettempdir(), "convtips-test-results"))
os.environ.setdefault("CONVTIPS_CACHE", os.path.join(tempfile.gettempdir(), "convtips-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

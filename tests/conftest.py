"""Unit tests only (the repository's conftest.py sets the profile, caches and quiet mode for tests and notebooks).

One torch thread: the unit tests run tiny models, where threads gain little, and on a busy machine (CI, several
jobs on two cores) OpenMP threads that wait for a free core make a forward pass 10-20x slower.
"""
import torch

torch.set_num_threads(1)

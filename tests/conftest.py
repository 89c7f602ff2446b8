"""Test configuration: deterministic hypothesis profile, quiet transformers logging, shared fixtures.

`helpers.py` (next to this file) holds the model factories, prompt builders and the tie-aware
comparison `assert_same_beams`; pytest puts this directory on sys.path, so tests `import helpers`.
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from hypothesis import HealthCheck, settings

# Tiny models: one thread is faster than two on the 2-core CI machine, and it keeps the float64
# reductions in one fixed order from run to run.
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,  # same examples on every run: CI is deterministic
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# More examples for a local soak run: HYPOTHESIS_PROFILE=soak (then each test's own
# max_examples is multiplied by 10 via helpers.examples()).
settings.register_profile("soak", parent=settings.get_profile("ci"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def llama():
    """A fresh tiny float64 Llama (seed 0) for tests that mutate or patch it."""
    from helpers import make_model

    return make_model("llama", seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """The built-in synthetic dataset, written once per session (read-only for the tests)."""
    from atspeed.rec.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root)
    return root

"""Fixtures for the service tests: the demo models on the synthetic dataset, loaded once (the
in-process client and the metrics reader are in serve_helpers.py)."""

from __future__ import annotations

import pytest

from atspeed.rec.data import eval_cases, load_dataset
from atspeed.rec.recommend import PRETRAINED, Recommender, load_recommender


@pytest.fixture(scope="session")
def rec(synthetic_dir) -> Recommender:
    return load_recommender(PRETRAINED / "synthetic-target", synthetic_dir, PRETRAINED / "synthetic-draft")


@pytest.fixture(scope="session")
def histories(synthetic_dir) -> list[list[int]]:
    """Real test-user histories (0-based items), 24 of them."""
    return [list(case.history) for case in eval_cases(load_dataset(synthetic_dir))[:24]]

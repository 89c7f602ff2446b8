"""Fixtures for the alignment tests: a small slice of the synthetic dataset, its tokenizer, and tiny
float64 target / draft models (float64 and spread-out logits, so beam search has no near-ties)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atspeed.rec.data import RecDataset, first_users
from atspeed.rec.recipes import new_model
from atspeed.rec.recommend import Recommender, build_recommender
from atspeed.rec.synthetic import SyntheticConfig, generate_dataset
from atspeed.rec.tokenizer import build_tokenizer

USERS = 24  # the first users of the synthetic dataset: ~200 training prompts, a few seconds per test


@pytest.fixture(scope="session")
def dataset() -> RecDataset:
    return first_users(generate_dataset(SyntheticConfig()), USERS)


@pytest.fixture(scope="session")
def tokenizer(dataset):
    return build_tokenizer(dataset.index)


def tiny(tokenizer, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = new_model("tiny", tokenizer)
    with torch.no_grad():  # a random tiny model is nearly uniform: spread its scores to avoid ties
        model.lm_head.weight.mul_(20.0)
    return model.double().eval()


@pytest.fixture
def target(tokenizer):
    """A fresh target per test (the same weights each time): align moves it to the training device."""
    return tiny(tokenizer, seed=3)


@pytest.fixture
def draft(tokenizer):
    """A fresh draft per test: align trains it in place."""
    return tiny(tokenizer, seed=4)


@pytest.fixture
def rec(target, tokenizer, dataset) -> Recommender:
    return build_recommender(target, tokenizer, dataset.index)


@pytest.fixture(scope="session")
def teacher_dir(tokenizer, dataset, tmp_path_factory) -> Path:
    """Teacher data (K = 5) of the `target` fixture's model, made once for the session."""
    from atspeed.align.teacher import generate_teacher_data

    rec = build_recommender(tiny(tokenizer, seed=3), tokenizer, dataset.index)
    return generate_teacher_data(rec, dataset, tmp_path_factory.mktemp("teacher"), k=5, chunk_size=64,
                                 progress=False)


@pytest.fixture(scope="session")
def teacher(teacher_dir):
    from atspeed.align.teacher import load_teacher_data

    return load_teacher_data(teacher_dir)

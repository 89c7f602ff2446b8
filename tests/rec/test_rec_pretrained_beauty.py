"""The committed Beauty target and draft: they load without training, fit the Beauty catalogue, and
decode it exactly as HF does (the checks that need the dataset skip where ../shared is absent)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from atspeed.rec.data import eval_cases, load_dataset
from atspeed.rec.recommend import PRETRAINED, committed_models, load_recommender, recommend

ROLES = ("beauty-target", "beauty-draft")


@pytest.mark.parametrize("role", ROLES)
def test_a_committed_beauty_model_loads_with_its_tokenizer_from_safetensors(role):
    folder = PRETRAINED / role
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(folder))
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_the_target_is_about_ten_times_the_draft():
    sizes = [AutoModelForCausalLM.from_pretrained(PRETRAINED / role).num_parameters() for role in ROLES]
    assert 8 < sizes[0] / sizes[1] < 16


def test_the_beauty_dataset_finds_its_committed_models(beauty_dir):
    assert committed_models(beauty_dir) == (PRETRAINED / "beauty-target", PRETRAINED / "beauty-draft")


@pytest.fixture(scope="module")
def beauty_rec(beauty_dir):
    return load_recommender(PRETRAINED / "beauty-target", beauty_dir, PRETRAINED / "beauty-draft",
                            allow_duplicate_ids=True)


@pytest.fixture(scope="module")
def beauty_users(beauty_dir):
    return [c.history for c in eval_cases(load_dataset(beauty_dir, allow_duplicate_ids=True))[:12]]


@pytest.mark.parametrize("method", ["tree", "speculative"])
def test_exact_methods_return_hf_lists_with_the_committed_beauty_models(beauty_rec, beauty_users, method):
    torch.manual_seed(0)
    hf = recommend(beauty_rec, beauty_users, 10, method="hf", batch_size=4)
    fast = recommend(beauty_rec, beauty_users, 10, method=method, batch_size=4)
    assert fast.items == hf.items
    torch.testing.assert_close(fast.scores, hf.scores, rtol=0, atol=1e-5)

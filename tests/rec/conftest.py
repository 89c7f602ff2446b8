"""Shared fixtures for the generative-recommendation tests: a synthetic catalogue, Beauty if present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atspeed.rec.data import RecDataset, load_dataset
from atspeed.rec.recipes import new_model
from atspeed.rec.tokenizer import ItemVocab, build_tokenizer, item_vocab
from atspeed.rec.train import save_final
from atspeed.rec.trie import ItemTrie, build_trie

REPO = Path(__file__).resolve().parents[2]
BEAUTY = REPO / "../shared/data/beauty"


@pytest.fixture(scope="session")
def synthetic(synthetic_dir) -> RecDataset:
    return load_dataset(synthetic_dir)


@pytest.fixture(scope="session")
def tokenizer(synthetic):
    return build_tokenizer(synthetic.index)


@pytest.fixture(scope="session")
def vocab(tokenizer, synthetic) -> ItemVocab:
    return item_vocab(tokenizer, synthetic.index)


@pytest.fixture(scope="session")
def trie(vocab, tokenizer) -> ItemTrie:
    return build_trie(vocab.tokens, len(tokenizer))


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    if not (BEAUTY / "beauty.index.json").exists():
        pytest.skip(f"Beauty dataset not found at {BEAUTY}")
    return BEAUTY


@pytest.fixture(scope="session")
def target_dir(tokenizer, synthetic, tmp_path_factory) -> Path:
    """A saved random tiny target (model + tokenizer folder, the synthetic index's fingerprint)."""
    torch.manual_seed(3)
    model = new_model("tiny", tokenizer)
    with torch.no_grad():  # a random tiny model is nearly uniform: spread its scores to avoid ties
        model.lm_head.weight.mul_(20.0)
    return save_final(model, tokenizer, tmp_path_factory.mktemp("target"), synthetic.index)

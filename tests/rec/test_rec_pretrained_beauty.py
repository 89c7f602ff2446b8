"""The committed Beauty targets and drafts: they load without training, fit their Beauty index, and
decode it exactly as HF does (the checks that need the dataset skip where ../shared is absent).

Two pairs are committed: `beauty-*` on Beauty's own (text) index, trained on train, and
`beauty-cf-*` on the co-occurrence index that `atspeed data reindex --include-valid --name beauty-cf`
makes, trained on train + valid (the final fit of the README's quality table)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from atspeed.cli import main
from atspeed.rec.data import eval_cases, load_dataset
from atspeed.rec.recommend import PRETRAINED, committed_models, load_recommender, recommend

PAIRS = ("beauty", "beauty-cf")
FOLDERS = [f"{pair}-{role}" for pair in PAIRS for role in ("target", "draft")]


@pytest.fixture(scope="module")
def beauty_cf_dir(beauty_dir, tmp_path_factory):
    """Beauty reindexed with the README's command, before `atspeed evaluate --data beauty-cf`."""
    out = tmp_path_factory.mktemp("cf") / "beauty-cf"
    args = ["data", "reindex", str(beauty_dir), "--out", str(out), "--include-valid", "--name", "beauty-cf"]
    CliRunner().invoke(main, args, catch_exceptions=False)
    return out


@pytest.fixture(scope="module")
def data_dirs(beauty_dir, beauty_cf_dir):
    return {"beauty": beauty_dir, "beauty-cf": beauty_cf_dir}


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_committed_beauty_model_loads_with_its_tokenizer_from_safetensors(folder):
    path = PRETRAINED / folder
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(path))
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


@pytest.mark.parametrize("pair", PAIRS)
def test_the_target_is_about_ten_times_the_draft(pair):
    sizes = [AutoModelForCausalLM.from_pretrained(PRETRAINED / f"{pair}-{role}").num_parameters()
             for role in ("target", "draft")]
    assert 8 < sizes[0] / sizes[1] < 16


@pytest.mark.parametrize("pair", PAIRS)
def test_each_beauty_index_finds_its_own_committed_models(data_dirs, pair):
    assert committed_models(data_dirs[pair]) == (PRETRAINED / f"{pair}-target", PRETRAINED / f"{pair}-draft")


def test_the_readme_reindex_command_rebuilds_the_index_the_cf_models_were_trained_on(beauty_cf_dir):
    load_recommender(PRETRAINED / "beauty-cf-target", beauty_cf_dir, PRETRAINED / "beauty-cf-draft")  # no refusal


def test_a_cf_model_is_refused_with_beautys_text_index(beauty_dir):
    with pytest.raises(ValueError, match="index"):
        load_recommender(PRETRAINED / "beauty-cf-target", beauty_dir, allow_duplicate_ids=True)


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", ["tree", "speculative"])
def test_exact_methods_return_hf_lists_with_the_committed_beauty_models(data_dirs, pair, method):
    data = data_dirs[pair]
    rec = load_recommender(PRETRAINED / f"{pair}-target", data, PRETRAINED / f"{pair}-draft", allow_duplicate_ids=True)
    users = [c.history for c in eval_cases(load_dataset(data, allow_duplicate_ids=True))[:12]]
    torch.manual_seed(0)
    hf = recommend(rec, users, 10, method="hf", batch_size=4)
    fast = recommend(rec, users, 10, method=method, batch_size=4)
    assert fast.items == hf.items
    torch.testing.assert_close(fast.scores, hf.scores, rtol=0, atol=1e-5)

"""A trained model records the item index it was trained on, and is never read with another one:
two indexes of one catalogue can use the same tokens for different items, and then nothing else
would fail, the recommendations would just name the wrong items."""

from __future__ import annotations

import json
import shutil

import pytest

from atspeed.rec.data import MODEL_INDEX_FILE, find_index_file, index_json, index_sha256, load_dataset
from atspeed.rec.recommend import PRETRAINED, load_recommender


def swapped_copy(data_dir, root):
    """The dataset with items 0 and 1 trading semantic IDs: the same tokens, other items."""
    shutil.copytree(data_dir, root)
    index = dict(load_dataset(root).index)
    index[0], index[1] = index[1], index[0]
    find_index_file(root).write_text(index_json(index))
    return root


def test_a_model_is_refused_with_another_index_of_the_same_tokens(target_dir, synthetic_dir, tmp_path):
    other = swapped_copy(synthetic_dir, tmp_path / "swapped")
    with pytest.raises(ValueError, match=r"target in .* was trained on another item index than .*swapped"):
        load_recommender(target_dir, other)


def test_a_draft_is_checked_as_well(target_dir, synthetic_dir, tmp_path):
    draft = shutil.copytree(target_dir, tmp_path / "draft")
    (draft / MODEL_INDEX_FILE).write_text(json.dumps({"items": 1, "index_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="The draft in .* was trained on another item index"):
        load_recommender(target_dir, synthetic_dir, draft)


def test_a_model_folder_without_a_fingerprint_still_loads(target_dir, synthetic_dir, tmp_path):
    legacy = shutil.copytree(target_dir, tmp_path / "legacy")
    (legacy / MODEL_INDEX_FILE).unlink()
    assert load_recommender(legacy, synthetic_dir).num_items == len(load_dataset(synthetic_dir).index)


def test_a_broken_fingerprint_file_is_named(target_dir, synthetic_dir, tmp_path):
    broken = shutil.copytree(target_dir, tmp_path / "broken")
    (broken / MODEL_INDEX_FILE).write_text("{")
    with pytest.raises(ValueError, match=rf"{MODEL_INDEX_FILE}: not a valid item-index fingerprint"):
        load_recommender(broken, synthetic_dir)


@pytest.mark.parametrize("role", ["target", "draft"])
def test_the_committed_demo_models_record_the_synthetic_index(role, synthetic):
    recorded = json.loads((PRETRAINED / f"synthetic-{role}" / MODEL_INDEX_FILE).read_text())
    assert recorded["index_sha256"] == index_sha256(synthetic.index)


@pytest.mark.parametrize("role", ["target", "draft"])
def test_the_committed_beauty_models_record_the_beauty_index(role, beauty_dir):
    recorded = json.loads((PRETRAINED / f"beauty-{role}" / MODEL_INDEX_FILE).read_text())
    assert recorded["index_sha256"] == index_sha256(load_dataset(beauty_dir, allow_duplicate_ids=True).index)

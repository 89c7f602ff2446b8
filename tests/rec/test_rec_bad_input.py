"""recommend() and load_recommender() refuse bad input with a message that names the problem and
where it is: K that is not an integer, histories that are empty or hold non-items (a bool is not an
item id), and model folders whose files are missing, broken or pickled."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from atspeed.rec.recommend import PRETRAINED, build_recommender, load_recommender, recommend
from atspeed.rec.recipes import new_model

TARGET = PRETRAINED / "synthetic-target"


@pytest.fixture(scope="module")
def rec(tokenizer, synthetic):
    torch.manual_seed(0)
    return build_recommender(new_model("tiny", tokenizer), tokenizer, synthetic.index)


@pytest.mark.parametrize(("k", "message"), [
    (2.0, r"k must be an integer, got 2\.0"),
    (True, r"k must be an integer, got True"),
    ("3", r"k must be an integer, got '3'"),
    (0, r"k must be between 1 and the number of items \(512\), got 0"),
])
def test_k_must_be_a_positive_integer(rec, k, message):
    with pytest.raises(ValueError, match=message):
        recommend(rec, [[1, 2]], k)


@pytest.mark.parametrize(("histories", "message"), [
    ([[]], r"History 0 is empty"),
    ([[3], ()], r"History 1 is empty"),
    ([[True]], r"History 0: item True is not in the catalogue"),
    ([[1.0]], r"History 0: item 1\.0 is not in the catalogue"),
    ([[-1]], r"History 0: item -1 is not in the catalogue \(item ids are 0 … 511\)"),
    ([3, 4], r"History 0: expected a list of item ids, got 3"),
    (["12 7"], r"History 0: expected a list of item ids, got '12 7'"),
    (None, r"histories must be a list of item-id lists, got NoneType"),
])
def test_bad_histories_are_refused_with_their_row(rec, histories, message):
    with pytest.raises(ValueError, match=message):
        recommend(rec, histories, 3)


@pytest.mark.parametrize(("settings", "message"), [
    (dict(max_history=0), r"max_history must be an integer >= 1, got 0"),
    (dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    (dict(gamma=0), r"gamma must be an integer >= 1, got 0"),
    (dict(draft_beams=0), r"draft_beams must be an integer >= 1 \(or None for 2K\), got 0"),
    (dict(engine="bogus"), r"engine must be one of .*, got 'bogus'"),
    (dict(method="hf", engine="bogus"), r"engine must be one of .*, got 'bogus'"),
])
def test_impossible_settings_are_refused(rec, settings, message):
    with pytest.raises(ValueError, match=message):
        recommend(rec, [[1, 2]], 3, **settings)


def test_numpy_item_ids_are_items(rec):
    assert recommend(rec, [np.array([4, 9])], 3).items == recommend(rec, [[4, 9]], 3).items


def copy_model(tmp_path, name="model"):
    folder = tmp_path / name
    shutil.copytree(TARGET, folder)
    return folder


def test_a_pickle_checkpoint_is_refused_with_the_conversion_command(tmp_path, synthetic_dir):
    folder = copy_model(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin \(a pickle\), and atspeed only loads safetensors.*"
                                         r"use_safetensors=False\)\.save_pretrained"):
        load_recommender(folder, synthetic_dir)


def test_a_truncated_weights_file_is_named(tmp_path, synthetic_dir):
    folder = copy_model(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{weights}: not a complete safetensors file"):
        load_recommender(TARGET, synthetic_dir, draft_dir=folder)


def test_missing_weights_are_named(tmp_path, synthetic_dir):
    folder = copy_model(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder}: no model\.safetensors"):
        load_recommender(folder, synthetic_dir)


@pytest.mark.parametrize(("file", "content", "message"), [
    ("tokenizer.json", None, r"no tokenizer\.json"),
    ("tokenizer.json", "{bad", r"cannot load the tokenizer"),
    ("config.json", "{bad", r"cannot load the (tokenizer|model): .*config\.json"),  # 5.x: tokenizer, 4.57: model
])
def test_broken_model_files_are_named(tmp_path, synthetic_dir, file, content, message):
    folder = copy_model(tmp_path)
    if content is None:
        (folder / file).unlink()
    else:
        (folder / file).write_text(content)
    with pytest.raises(ValueError if content else FileNotFoundError, match=rf"{folder}.*{message}"):
        load_recommender(folder, synthetic_dir)

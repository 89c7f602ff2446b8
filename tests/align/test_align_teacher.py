"""Teacher data: the target's top-K beam-search lists for every distinct training history, cached in
safetensors chunks that a rerun resumes, merged into one file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import atspeed.align.teacher as teacher_mod
from atspeed.align.teacher import (
    generate_teacher_data,
    load_teacher_data,
    teacher_prompts,
)
from atspeed.rec.recommend import build_recommender, recommend

K, CHUNK = 5, 64  # the dataset fixture has 200 training samples -> 4 chunks of distinct prompts


class Crash(Exception):
    pass


@pytest.fixture
def count_chunks(monkeypatch):
    """Counts the chunks computed; `crash_after=n` makes the (n+1)-th chunk fail like a killed job."""
    state = {"calls": 0, "crash_after": None}

    def counting(*args, **kwargs):
        if state["calls"] == state["crash_after"]:
            raise Crash
        state["calls"] += 1
        return recommend(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "recommend", counting)
    return state


def test_prompts_are_the_distinct_training_histories(dataset):
    prompts = teacher_prompts(dataset)
    assert len(prompts) == len(set(prompts)) > 0
    assert all(len(p) >= 1 for p in prompts)


def test_items_are_the_targets_beam_search_lists(rec, teacher):
    histories = teacher.histories[:6]
    ref = recommend(rec, histories, K, method="hf")
    assert teacher.items[:6].tolist() == ref.items
    torch.testing.assert_close(teacher.scores[:6], ref.scores.float())


def test_cache_round_trips(dataset, teacher, teacher_dir):
    prompts = teacher_prompts(dataset)
    assert teacher.histories == prompts
    assert teacher.items.shape == (len(prompts), K) and teacher.items.dtype == torch.int64
    assert teacher.scores.shape == (len(prompts), K) and teacher.scores.dtype == torch.float32
    meta = json.loads((teacher_dir / "meta.json").read_text())
    assert meta["k"] == K and meta["dataset"] == dataset.name and meta["num_prompts"] == len(prompts)
    assert teacher.meta == meta


def test_only_safetensors_and_json_are_written(teacher_dir):
    names = sorted(p.name for p in teacher_dir.rglob("*") if p.is_file())
    assert names == ["meta.json", "teacher.safetensors"]  # chunks are removed after the merge
    load_file(teacher_dir / "teacher.safetensors")  # no pickle: readable without torch.load


def test_a_crash_leaves_only_complete_chunk_files(rec, dataset, tmp_path, count_chunks):
    count_chunks["crash_after"] = 2
    with pytest.raises(Crash):
        generate_teacher_data(rec, dataset, tmp_path, k=K, chunk_size=CHUNK, progress=False)
    files = sorted((tmp_path / "chunks").iterdir())
    assert [f.name for f in files] == ["chunk-00000.safetensors", "chunk-00001.safetensors"]
    for f in files:
        assert load_file(f)["items"].shape == (CHUNK, K)
    assert not (tmp_path / "teacher.safetensors").exists()


def test_a_rerun_skips_finished_chunks_and_gives_the_same_data(rec, dataset, teacher, tmp_path, count_chunks):
    count_chunks["crash_after"] = 2
    with pytest.raises(Crash):
        generate_teacher_data(rec, dataset, tmp_path, k=K, chunk_size=CHUNK, progress=False)
    count_chunks.update(calls=0, crash_after=None)
    generate_teacher_data(rec, dataset, tmp_path, k=K, chunk_size=CHUNK, progress=False)
    n_chunks = -(-len(teacher) // CHUNK)
    assert count_chunks["calls"] == n_chunks - 2
    resumed = load_teacher_data(tmp_path)
    assert resumed.histories == teacher.histories
    assert torch.equal(resumed.items, teacher.items) and torch.equal(resumed.scores, teacher.scores)


def test_a_finished_cache_is_returned_without_decoding(rec, dataset, teacher_dir, count_chunks):
    generate_teacher_data(rec, dataset, teacher_dir, k=K, chunk_size=CHUNK, progress=False)
    assert count_chunks["calls"] == 0


def test_resuming_with_another_k_is_refused(rec, dataset, teacher_dir):
    with pytest.raises(ValueError, match="k=5.*k=4"):
        generate_teacher_data(rec, dataset, teacher_dir, k=4, chunk_size=CHUNK, progress=False)


def test_resuming_with_another_target_is_refused(rec, dataset, teacher_dir, draft, tokenizer):
    other = build_recommender(draft, tokenizer, dataset.index)
    with pytest.raises(ValueError, match="another target"):
        generate_teacher_data(other, dataset, teacher_dir, k=K, chunk_size=CHUNK, progress=False)


def test_loading_an_unfinished_cache_says_how_to_finish_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate_teacher_data"):
        load_teacher_data(tmp_path)

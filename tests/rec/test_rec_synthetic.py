"""The synthetic dataset: deterministic, labelled, hierarchical IDs, sequential structure."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from atspeed.rec.data import eval_cases, load_dataset, train_samples
from atspeed.rec.synthetic import SyntheticConfig, generate_dataset, write_synthetic

SMALL = SyntheticConfig(num_items=128, num_users=100, seed=3)


def test_same_seed_writes_identical_files(tmp_path):
    write_synthetic(tmp_path / "a", SMALL)
    write_synthetic(tmp_path / "b", SMALL)
    for p in sorted((tmp_path / "a").iterdir()):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def test_different_seeds_give_different_data():
    a, b = generate_dataset(SMALL), generate_dataset(SyntheticConfig(num_items=128, num_users=100, seed=4))
    assert a.index != b.index
    assert a.train != b.train


def test_written_dataset_is_labelled_synthetic(synthetic_dir, synthetic):
    assert synthetic.synthetic
    assert synthetic.meta["generator"] == "atspeed.rec.synthetic"
    assert (synthetic_dir / "README.txt").read_text().startswith("SYNTHETIC DATA")


def test_default_size_is_small(synthetic):
    assert synthetic.num_items == 512
    assert len(synthetic.users) == 1000


def test_semantic_ids_are_four_unique_tokens(synthetic):
    ids = list(synthetic.index.values())
    assert {len(sid) for sid in ids} == {4}
    assert len(set(ids)) == len(ids)


def test_id_levels_follow_the_hierarchy(synthetic):
    cfg = SyntheticConfig()
    ids = synthetic.index.values()
    assert len({sid[0] for sid in ids}) == cfg.num_categories
    assert len({sid[:2] for sid in ids}) == cfg.num_categories * cfg.subcategories
    assert len({sid[:3] for sid in ids}) == cfg.num_categories * cfg.subcategories * cfg.clusters


def test_next_item_usually_shares_the_previous_items_category_and_cluster(synthetic):
    pairs = [(a, b) for seq in synthetic.train.values() for a, b in zip(seq, seq[1:])]
    same = lambda d: np.mean([synthetic.index[a][:d] == synthetic.index[b][:d] for a, b in pairs])  # noqa: E731
    chance_category = 1 / SyntheticConfig().num_categories
    assert same(1) > 5 * chance_category
    assert same(3) > 0.3


def test_users_have_no_repeated_items(synthetic):
    for u in synthetic.users:
        seq = synthetic.train[u] + synthetic.valid[u] + synthetic.test[u]
        assert len(set(seq)) == len(seq)


def test_split_is_by_global_time_so_held_out_items_cluster_in_some_users(synthetic):
    counts = Counter(len(seq) > 0 for seq in synthetic.test.values())
    total = sum(len(s) for split in (synthetic.train, synthetic.valid, synthetic.test) for s in split.values())
    n_test = sum(len(s) for s in synthetic.test.values())
    assert 0.05 < n_test / total < 0.15  # about 1/10 of all interactions
    assert 0 < counts[True] < counts[False]  # a minority of users has test items


def test_test_users_have_a_history_and_training_samples_exist(synthetic):
    cases = eval_cases(synthetic, "test")
    assert len(cases) > 100
    assert all(c.history for c in cases)
    assert len(train_samples(synthetic)) > 5000


def test_written_files_load_back_as_the_generated_dataset(tmp_path):
    generated = write_synthetic(tmp_path, SMALL)
    assert load_dataset(tmp_path) == generated


@pytest.mark.parametrize("users", [0, -1, 2.5])
def test_a_synthetic_dataset_without_a_whole_positive_number_of_users_is_refused(users):
    with pytest.raises(ValueError, match=r"num_users must be an integer >= 1"):
        generate_dataset(SyntheticConfig(num_items=128, num_users=users))

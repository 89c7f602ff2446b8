"""`atspeed data reindex`: a dataset copied with semantic IDs learnt from its own train split
(co-occurrence embeddings + residual k-means), for indexes made from item text."""

from __future__ import annotations

import random
import shutil

import pytest
from click.testing import CliRunner

from atspeed.cli import main
from atspeed.rec.data import load_dataset, shared_ids
from atspeed.rec.prepare import reindex


def test_a_reindexed_dataset_keeps_its_sequences_and_gives_every_item_its_own_id(synthetic_dir, tmp_path):
    path = reindex(synthetic_dir, tmp_path / "cf", levels=2, codes_per_level=32)
    old, new = load_dataset(synthetic_dir), load_dataset(tmp_path / "cf")  # strict: IDs unique
    assert path.parent == tmp_path / "cf"
    assert (new.train, new.valid, new.test) == (old.train, old.valid, old.test)
    assert set(new.index) == set(old.index)
    assert {len(sid) for sid in new.index.values()} == {3}  # 2 levels + the disambiguation code
    assert not shared_ids(new.index)
    assert new.index != old.index


def randomised(data_dir, root, splits):
    """A copy of the dataset whose `splits` hold 5 random items per user instead of theirs."""
    shutil.copytree(data_dir, root)
    rng = random.Random(0)
    num_items = len(load_dataset(data_dir).index)
    for split in splits:
        users = [line.split()[0] for line in (root / f"sequential_{split}.txt").read_text().splitlines()]
        rows = (" ".join([u, *(str(rng.randint(1, num_items)) for _ in range(5))]) for u in users)
        (root / f"sequential_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_ids_are_learnt_from_the_train_split_only(synthetic_dir, tmp_path):
    changed = randomised(synthetic_dir, tmp_path / "changed", ("valid", "test"))
    reindex(synthetic_dir, tmp_path / "a", levels=2, codes_per_level=32)
    reindex(changed, tmp_path / "b", levels=2, codes_per_level=32)
    assert load_dataset(tmp_path / "a").index == load_dataset(tmp_path / "b").index


def test_with_include_valid_the_valid_items_shape_the_ids_and_the_test_items_still_do_not(synthetic_dir, tmp_path):
    other_test = randomised(synthetic_dir, tmp_path / "other-test", ("test",))
    other_valid = randomised(synthetic_dir, tmp_path / "other-valid", ("valid",))
    for name, data in (("a", synthetic_dir), ("b", other_test), ("c", other_valid)):
        reindex(data, tmp_path / name, levels=2, codes_per_level=32, include_valid=True)
    a, b, c = (load_dataset(tmp_path / name).index for name in "abc")
    assert a == b
    assert a != c


def test_the_same_seed_gives_the_same_index(synthetic_dir, tmp_path):
    reindex(synthetic_dir, tmp_path / "a", levels=2, codes_per_level=32, seed=3)
    reindex(synthetic_dir, tmp_path / "b", levels=2, codes_per_level=32, seed=3)
    a, b = (tmp_path / name / "synthetic.index.json" for name in "ab")
    assert a.read_text() == b.read_text()


def test_the_new_folders_description_says_how_its_index_was_made(synthetic_dir, tmp_path):
    reindex(synthetic_dir, tmp_path / "re", levels=2, codes_per_level=64, seed=3)
    meta = load_dataset(tmp_path / "re").meta
    assert meta["index_history"][-1] == {"by": "atspeed.rec.prepare.reindex", "length": 3, "levels": 2,
                                         "codes_per_level": 64, "dim": 32, "window": 3, "seed": 3,
                                         "include_valid": False}
    assert {k: v for k, v in meta.items() if k != "index_history"} == load_dataset(synthetic_dir).meta


def test_a_new_name_names_the_index_file_and_the_dataset(synthetic_dir, tmp_path):
    path = reindex(synthetic_dir, tmp_path / "cf", levels=2, codes_per_level=32, name="synthetic-cf")
    assert path.name == "synthetic-cf.index.json"
    assert [p.name for p in (tmp_path / "cf").glob("*.index.json")] == ["synthetic-cf.index.json"]
    assert load_dataset(tmp_path / "cf").name == "synthetic-cf"


def test_a_name_that_is_not_a_file_stem_is_refused(synthetic_dir, tmp_path):
    with pytest.raises(ValueError, match="plain file-name stem"):
        reindex(synthetic_dir, tmp_path / "cf", name="../x")
    assert not (tmp_path / "cf").exists()


def test_an_existing_output_folder_is_refused(synthetic_dir, tmp_path):
    (tmp_path / "cf").mkdir()
    with pytest.raises(FileExistsError, match="give a new folder"):
        reindex(synthetic_dir, tmp_path / "cf")


def test_the_command_writes_the_new_dataset(synthetic_dir, tmp_path):
    result = CliRunner().invoke(main, ["data", "reindex", str(synthetic_dir), "--out", str(tmp_path / "cf"),
                                       "--levels", "2", "--codes", "32"])
    assert result.exit_code == 0, result.output
    assert "semantic IDs from the train split's co-occurrence (3 codes per item)" in result.output
    assert len(load_dataset(tmp_path / "cf").index) == len(load_dataset(synthetic_dir).index)

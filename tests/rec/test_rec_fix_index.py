"""`atspeed data fix-index`: an index where items share a semantic ID (LC-Rec's Beauty has 9 IDs shared by
21 items) gets one more code per ID, so that every item has its own ID and can be recommended."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from atspeed.cli import main
from atspeed.rec.data import load_dataset, shared_ids
from atspeed.rec.prepare import fix_index
from atspeed.rec.semantic_ids import add_disambiguation_level
from atspeed.rec.tokenizer import build_tokenizer, decode_items, item_vocab

INDEX = {  # items 1 and 2 share an ID, so do 3, 4 and 5
    "0": ["<a_0>", "<b_0>"], "1": ["<a_0>", "<b_1>"], "2": ["<a_0>", "<b_1>"],
    "3": ["<a_1>", "<b_0>"], "4": ["<a_1>", "<b_0>"], "5": ["<a_1>", "<b_0>"],
}


def write(root, index=INDEX):
    root.mkdir()
    (root / "toy.index.json").write_text(json.dumps(index))
    for split, text in (("train", "1 1 2 3\n2 4 5\n"), ("valid", "1 6\n2\n"), ("test", "1 2\n2 3\n")):
        (root / f"sequential_{split}.txt").write_text(text)
    (root / "README.txt").write_text("toy data\n")
    return root


def test_shared_ids_get_codes_0_1_2_in_item_order_and_keep_their_tokens():
    fixed = add_disambiguation_level({int(k): tuple(v) for k, v in INDEX.items()})
    assert [fixed[i][-1] for i in range(6)] == ["<c_0>", "<c_0>", "<c_1>", "<c_0>", "<c_1>", "<c_2>"]
    assert all(fixed[i][:2] == tuple(INDEX[str(i)]) for i in range(6))


def test_a_fixed_dataset_loads_strictly_and_every_item_decodes_to_itself(tmp_path):
    path, shared = fix_index(write(tmp_path / "toy"), tmp_path / "fixed")
    ds = load_dataset(tmp_path / "fixed")  # no allow_duplicate_ids
    vocab = item_vocab(build_tokenizer(ds.index), ds.index)
    assert shared == 5 and path == tmp_path / "fixed" / "toy.index.json"
    assert decode_items(vocab, vocab.tokens) == list(range(6))


def test_out_copies_the_other_files_and_leaves_the_original_alone(tmp_path):
    src = write(tmp_path / "toy")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    fix_index(src, tmp_path / "fixed")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert (tmp_path / "fixed" / "README.txt").read_text() == (
        "toy data\nThe index was then replaced by atspeed.rec.prepare.fix_index: item id -> 3 semantic-ID tokens "
        "(meta.json: index_history).\n")
    assert load_dataset(tmp_path / "fixed").train == load_dataset(src, allow_duplicate_ids=True).train


def test_without_out_the_index_is_fixed_in_place(tmp_path):
    fix_index(write(tmp_path / "toy"))
    assert not shared_ids(load_dataset(tmp_path / "toy").index)
    assert "replaced by atspeed.rec.prepare.fix_index" in (tmp_path / "toy" / "README.txt").read_text()


def test_an_index_without_shared_ids_is_refused(tmp_path):
    with pytest.raises(ValueError, match="already unique; nothing to fix"):
        fix_index(write(tmp_path / "toy", {"0": ["<a_0>"], "1": ["<a_1>"]}))


def test_an_existing_out_folder_is_refused(tmp_path):
    (tmp_path / "fixed").mkdir()
    with pytest.raises(FileExistsError, match="give a new folder"):
        fix_index(write(tmp_path / "toy"), tmp_path / "fixed")


def test_the_duplicate_id_error_says_how_to_fix_it(tmp_path):
    root = write(tmp_path / "toy")
    with pytest.raises(ValueError, match=rf"`atspeed data fix-index {root} --out FIXED` writes a copy"):
        load_dataset(root)


def test_the_command_fixes_an_index(tmp_path):
    result = CliRunner().invoke(main, ["data", "fix-index", str(write(tmp_path / "toy")), "--out",
                                       str(tmp_path / "fixed")])
    assert result.exit_code == 0, result.output
    assert "5 items that shared a semantic ID now have their own" in result.output
    assert load_dataset(tmp_path / "fixed").num_items == 6


def test_beauty_fixed_has_a_unique_id_for_each_of_its_items(beauty_dir, tmp_path):
    _, shared = fix_index(beauty_dir, tmp_path / "beauty")
    ds = load_dataset(tmp_path / "beauty")
    vocab = item_vocab(build_tokenizer(ds.index), ds.index)
    assert shared == 21 and ds.num_items == 12035
    assert decode_items(vocab, vocab.tokens) == list(range(12035))

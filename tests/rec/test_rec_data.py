"""Loading, splitting and writing datasets in the LC-Rec / AtSpeed format."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from atspeed.rec.data import (
    RecDataset,
    eval_cases,
    load_dataset,
    recent,
    save_dataset,
    splits_sha256,
    train_samples,
    train_windows,
    with_valid_in_train,
)

INDEX = {  # 4 items, 4 tokens each
    "0": ["<a_0>", "<b_0>", "<c_0>", "<d_0>"],
    "1": ["<a_0>", "<b_1>", "<c_0>", "<d_0>"],
    "2": ["<a_1>", "<b_0>", "<c_0>", "<d_0>"],
    "3": ["<a_1>", "<b_0>", "<c_0>", "<d_1>"],
}


def write(root, index=INDEX, train="1 1 2 3\n2 4\n3\n", valid="1 4\n2\n3 1\n", test="1 2 3\n2\n3 2\n"):
    root.mkdir(exist_ok=True)
    (root / "toy.index.json").write_text(json.dumps(index))
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (root / f"sequential_{name}.txt").write_text(text)
    return root


def test_items_are_zero_based_in_memory(tmp_path):
    ds = load_dataset(write(tmp_path))
    assert ds.name == "toy"
    assert ds.train[1] == (0, 1, 2)  # "1 1 2 3": user 1, items 1, 2, 3 on disk
    assert ds.index[3] == ("<a_1>", "<b_0>", "<c_0>", "<d_1>")


def test_a_line_with_only_a_user_is_an_empty_sequence(tmp_path):
    ds = load_dataset(write(tmp_path))
    assert ds.train[3] == ()
    assert ds.valid[2] == ()


def test_with_valid_in_train_appends_each_users_valid_items_and_leaves_no_valid_split(tmp_path):
    ds = with_valid_in_train(load_dataset(write(tmp_path)))
    assert ds.train == {1: (0, 1, 2, 3), 2: (3,), 3: (0,)}  # user 3: no train items, valid item 1
    assert ds.valid == {}
    assert [c.history for c in eval_cases(ds, "test")] == [(0, 1, 2, 3), (0,)]  # the same test histories


def test_train_samples_predict_each_next_item_from_its_prefix(tmp_path):
    ds = load_dataset(write(tmp_path))
    samples = [(s.user, s.history, s.target) for s in train_samples(ds)]
    assert samples == [(1, (0,), 1), (1, (0, 1), 2)]  # user 2 has one train item: no sample


def predictions(windows):
    """(user, item position in the user's train sequence) for every predicted item of `windows`."""
    return sorted((w.user, w.start + t) for w in windows for t in range(1, len(w.items)))


def test_train_windows_predict_the_same_items_as_train_samples_each_once(tmp_path):
    train = "1 " + " ".join(str(1 + i % 4) for i in range(47)) + "\n2 4\n3 1 2\n"
    ds = load_dataset(write(tmp_path, train=train, valid="1\n2\n3\n", test="1\n2\n3\n"))
    windows = train_windows(ds, max_history=20)
    per_user = {u: sum(1 for s in train_samples(ds) if s.user == u) for u in ds.train}
    found = predictions(windows)
    assert len(found) == len(set(found)) == sum(per_user.values())
    assert found == sorted((u, t) for u, seq in ds.train.items() for t in range(1, len(seq)))


def test_a_train_window_holds_the_user_items_in_order_and_at_most_max_history_plus_one(tmp_path):
    train = "1 " + " ".join(str(1 + i % 4) for i in range(47)) + "\n"
    ds = load_dataset(write(tmp_path, train=train, valid="1\n", test="1\n"))
    windows = train_windows(ds, max_history=20)
    assert [len(w.items) for w in windows] == [21, 21, 7]  # cut from the end, one item of overlap
    for w in windows:
        assert w.items == ds.train[1][w.start : w.start + len(w.items)]


def test_train_windows_refuse_a_history_of_no_items(tmp_path):
    with pytest.raises(ValueError, match="max_history"):
        train_windows(load_dataset(write(tmp_path)), max_history=0)


def test_train_sample_history_keeps_only_the_most_recent_items(tmp_path):
    train = "1 " + " ".join(str(1 + i % 4) for i in range(30)) + "\n"
    ds = load_dataset(write(tmp_path, train=train, valid="1\n", test="1 1\n"))
    last = train_samples(ds, max_history=20)[-1]
    assert len(last.history) == 20
    assert last.history == ds.train[1][9:29]
    assert last.target == ds.train[1][29]


def test_recent_keeps_the_last_max_history_items_oldest_first():
    assert recent([5, 6, 7, 8], 2) == (7, 8)
    assert recent([5, 6], 20) == (5, 6)
    assert recent([5, 6], 0) == ()


def test_test_history_is_train_then_valid_and_truth_is_all_test_items(tmp_path):
    cases = {c.user: c for c in eval_cases(load_dataset(write(tmp_path)), "test")}
    assert cases[1].history == (0, 1, 2, 3)
    assert cases[1].truth == frozenset({1, 2})


def test_users_without_test_items_are_not_evaluated(tmp_path):
    cases = eval_cases(load_dataset(write(tmp_path)), "test")
    assert [c.user for c in cases] == [1, 3]


def test_user_with_only_valid_items_gets_them_as_test_history(tmp_path):
    cases = {c.user: c for c in eval_cases(load_dataset(write(tmp_path)), "test")}
    assert cases[3].history == (0,)  # no train items; valid item 1 -> id 0


def test_valid_history_is_train_and_truth_is_valid_items(tmp_path):
    cases = eval_cases(load_dataset(write(tmp_path)), "valid")
    assert [(c.user, c.history, c.truth) for c in cases] == [(1, (0, 1, 2), frozenset({3}))]


def test_users_with_nothing_before_the_split_are_not_evaluated(tmp_path):
    ds = load_dataset(write(tmp_path))
    assert ds.valid[3] and not ds.train.get(3)  # user 3 has a valid item but no history to recommend from
    assert 3 not in {c.user for c in eval_cases(ds, "valid")}


def test_eval_history_keeps_only_the_most_recent_items(tmp_path):
    train = "1 " + " ".join(str(1 + i % 4) for i in range(30)) + "\n"
    ds = load_dataset(write(tmp_path, train=train, valid="1 2\n", test="1 3\n"))
    (case,) = eval_cases(ds, "test", max_history=20)
    assert case.history == (ds.train[1] + ds.valid[1])[-20:]


def test_no_test_items_at_all_is_an_error(tmp_path):
    ds = load_dataset(write(tmp_path, test="1\n2\n3\n"))
    with pytest.raises(ValueError, match="no user has a test item"):
        eval_cases(ds, "test")


def test_malformed_line_error_names_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"sequential_valid\.txt, line 2: 'x'"):
        load_dataset(write(tmp_path, valid="1 4\n2 x\n3\n"))


def test_item_missing_from_index_error_names_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"sequential_train\.txt, line 3: item 5 is not in the index"):
        load_dataset(write(tmp_path, train="1 1\n2 4\n3 5\n"))


@pytest.mark.parametrize("line", ["1 0", "0 1"])
def test_item_or_user_zero_is_refused_in_one_based_files(tmp_path, line):
    with pytest.raises(ValueError, match=r"sequential_test\.txt, line 1: '0' is not a positive integer"):
        load_dataset(write(tmp_path, test=f"{line}\n"))


def test_a_digit_that_is_not_a_decimal_is_a_malformed_line(tmp_path):
    with pytest.raises(ValueError, match=r"sequential_test\.txt, line 1: '²' is not a positive integer"):
        load_dataset(write(tmp_path, test="1 ²\n"))


def test_duplicate_user_line_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"sequential_train\.txt, line 2: user 1 already"):
        load_dataset(write(tmp_path, train="1 1\n1 2\n"))


def test_duplicate_semantic_ids_are_an_error_naming_the_items(tmp_path):
    index = dict(INDEX, **{"3": INDEX["2"]})
    with pytest.raises(
        ValueError, match=r"toy\.index\.json: 1 semantic IDs are shared by 2 items, e\.g\. items \[2, 3\]"
    ):
        load_dataset(write(tmp_path, index=index))


def test_duplicate_semantic_ids_load_when_allowed(tmp_path):
    index = dict(INDEX, **{"3": INDEX["2"]})
    ds = load_dataset(write(tmp_path, index=index), allow_duplicate_ids=True)
    assert ds.index[3] == ds.index[2]


def test_index_keys_must_have_no_gaps(tmp_path):
    index = {"0": INDEX["0"], "2": INDEX["2"]}
    with pytest.raises(ValueError, match=r"toy\.index\.json: item keys must be 0 … 1 without gaps"):
        load_dataset(write(tmp_path, index=index))


def test_an_index_key_with_a_leading_zero_is_refused_not_merged(tmp_path):
    root = write(tmp_path)
    text = (root / "toy.index.json").read_text().replace('"1":', '"01":')
    (root / "toy.index.json").write_text(text)
    with pytest.raises(ValueError, match=r"item key '01' is not a non-negative integer written plainly"):
        load_dataset(root)


@pytest.mark.parametrize("key", ["²", "1" * 5000])
def test_an_index_key_that_int_cannot_read_is_refused_naming_the_file(tmp_path, key):
    """'²' is a digit to str.isdigit, and 5,000 digits exceed int()'s limit: both are malformed keys."""
    root = write(tmp_path)
    (root / "toy.index.json").write_text(f'{{"0": ["<a_0>"], "{key}": ["<a_1>"]}}')
    with pytest.raises(ValueError, match=r"toy\.index\.json: item key .* is not a non-negative integer"):
        load_dataset(root)


def test_a_user_id_too_long_for_int_is_a_malformed_line(tmp_path):
    with pytest.raises(ValueError, match=r"sequential_test\.txt, line 1: '1111.*' is not a positive integer"):
        load_dataset(write(tmp_path, test="1" * 5000 + " 1\n"))


def test_an_index_key_written_twice_is_refused(tmp_path):
    root = write(tmp_path)
    (root / "toy.index.json").write_text('{"0": ["<a_0>"], "1": ["<a_1>"], "1": ["<a_2>"]}')
    with pytest.raises(ValueError, match=r"item key '1' appears twice"):
        load_dataset(root)


def test_an_index_that_is_not_an_object_is_refused(tmp_path):
    root = write(tmp_path)
    (root / "toy.index.json").write_text('[["0", ["<a_0>"]]]')
    with pytest.raises(ValueError, match=r"expected a non-empty JSON object"):
        load_dataset(root)


@pytest.mark.parametrize("token", ["a1", "<a 1>", "<a<1>>", "<>"])
def test_a_token_the_tokenizers_text_form_cannot_hold_is_refused(tmp_path, token):
    index = dict(INDEX, **{"3": ["<a_1>", "<b_0>", "<c_0>", token]})
    with pytest.raises(ValueError, match=r"item 3: token .* is not of the form <\.\.\.>"):
        load_dataset(write(tmp_path, index=index))


def test_semantic_ids_must_have_one_length(tmp_path):
    index = dict(INDEX, **{"3": ["<a_1>", "<b_0>", "<c_0>"]})
    with pytest.raises(ValueError, match=r"item 3 has 3 tokens \['<a_1>', '<b_0>', '<c_0>'\] but the other IDs have 4"):
        load_dataset(write(tmp_path, index=index))


def test_splits_fingerprint_ignores_the_name_and_the_item_index(tmp_path):
    other_index = {str(i): [f"<a_{i}>", "<b_0>", "<c_0>", "<d_0>"] for i in range(4)}
    ds = load_dataset(write(tmp_path / "a"))
    reindexed = replace(load_dataset(write(tmp_path / "b", index=other_index)), name="toy-cf")
    assert splits_sha256(reindexed) == splits_sha256(ds)


def test_splits_fingerprint_changes_with_one_interaction(tmp_path):
    ds = load_dataset(write(tmp_path / "a"))
    moved = load_dataset(write(tmp_path / "b", test="1 2 3\n2\n3 1\n"))
    assert splits_sha256(moved) != splits_sha256(ds)


def test_save_then_load_gives_the_same_dataset(tmp_path):
    ds = load_dataset(write(tmp_path / "a"))
    save_dataset(ds, tmp_path / "b")
    assert load_dataset(tmp_path / "b") == ds


def test_save_writes_the_same_bytes_it_read(tmp_path):
    src = write(tmp_path / "a")
    save_dataset(load_dataset(src), tmp_path / "b")
    for name in ("sequential_train.txt", "sequential_valid.txt", "sequential_test.txt"):
        assert (tmp_path / "b" / name).read_text() == (src / name).read_text()


def test_save_leaves_no_temporary_files(tmp_path):
    save_dataset(load_dataset(write(tmp_path / "a")), tmp_path / "b")
    assert sorted(os.listdir(tmp_path / "b")) == [
        "sequential_test.txt",
        "sequential_train.txt",
        "sequential_valid.txt",
        "toy.index.json",
    ]


def test_failed_save_keeps_old_files_and_leaves_no_partial_ones(tmp_path):
    root = write(tmp_path)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    ds = load_dataset(root)
    broken = RecDataset(name="toy", index=ds.index, train=ds.train, valid=ds.valid, test={1: (99,)})
    with pytest.raises(ValueError, match="item ids must be"):
        save_dataset(broken, root)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before


def test_beauty_has_the_papers_counts(beauty_dir):
    ds = load_dataset(beauty_dir, allow_duplicate_ids=True)
    assert ds.num_items == 12035
    assert len(ds.users) == 19383
    assert len(eval_cases(ds, "test")) == 3553


def test_beauty_index_has_semantic_ids_shared_by_several_items(beauty_dir):
    """The data README says every ID is unique; it is not (9 IDs, 21 items), so strict loading refuses it."""
    with pytest.raises(ValueError, match="9 semantic IDs are shared by 21 items"):
        load_dataset(beauty_dir)


def test_crash_while_writing_leaves_old_files_and_no_temporaries(tmp_path, monkeypatch):
    root = write(tmp_path)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    ds = load_dataset(root)
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr("atspeed.files.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(ds, root)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before

"""Bring-your-own-data: a CSV / Parquet log becomes a loadable dataset folder, or a clear error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import atspeed.rec.prepare as prepare_module
from atspeed.rec.data import load_dataset
from atspeed.rec.prepare import prepare_dataset, read_interactions, split_by_time


def _log(users: int = 6, per_user: int = 5) -> pd.DataFrame:
    """Users u0 … with string item keys; user k's items start at k, times interleave across users."""
    rows = [
        (f"u{u}", f"item-{(u + t) % 9}", 100 * t + u) for u in range(users) for t in range(per_user)
    ]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def _raw_history(ds, user: int) -> list[str]:
    """A user's items, all splits in time order, as raw keys via what was written."""
    items = ds.train[user] + ds.valid[user] + ds.test[user]
    return [ds.meta["item_keys"][i] for i in items]


def _folder_is_empty(path) -> bool:
    return not path.exists() or not any(path.iterdir())


# ----------------------------------------------------------------------------------------------
# Round trips


def test_csv_log_becomes_a_dataset_that_loads(tmp_path):
    _log().to_csv(tmp_path / "log.csv", index=False)
    ds = prepare_dataset(tmp_path / "log.csv", tmp_path / "out", name="mine")
    assert load_dataset(tmp_path / "out") == ds  # unique IDs, no allow_duplicate_ids needed
    assert ds.name == "mine" and ds.num_items == 9 and len(ds.users) == 6
    assert ds.meta["prepared_by"] == "atspeed.rec.prepare"
    assert ds.meta["source"] == str(tmp_path / "log.csv")


def test_parquet_log_becomes_a_dataset_that_loads(tmp_path):
    _log().to_parquet(tmp_path / "log.parquet")
    ds = prepare_dataset(tmp_path / "log.parquet", tmp_path / "out")
    assert load_dataset(tmp_path / "out") == ds
    assert sum(ds.meta["interactions"].values()) == 30


def test_gzipped_tsv_log_is_read(tmp_path):
    _log().to_csv(tmp_path / "log.tsv.gz", sep="\t", index=False)
    log = read_interactions(tmp_path / "log.tsv.gz")
    assert log.columns.tolist() == ["user", "item", "timestamp"] and len(log) == 30


def test_same_log_and_seed_write_identical_files(tmp_path):
    prepare_dataset(_log(), tmp_path / "a", seed=1)
    prepare_dataset(_log(), tmp_path / "b", seed=1)
    for p in sorted((tmp_path / "a").iterdir()):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def test_string_keys_map_back_through_meta(tmp_path):
    log = _log()
    ds = load_dataset(prepare_dataset(log, tmp_path / "out") and tmp_path / "out")
    for user in ds.users:
        raw_user = ds.meta["user_keys"][user - 1]
        expected = log[log.user == raw_user].sort_values("timestamp")["item"].tolist()
        assert _raw_history(ds, user) == expected


def test_csv_keys_keep_their_text(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\n01,007,1\n01,7,2\n2,007,3\n")
    ds = prepare_dataset(tmp_path / "log.csv", tmp_path / "out")
    assert ds.meta["item_keys"] == ["007", "7"] and ds.meta["user_keys"] == ["01", "2"]


def test_csv_keys_that_pandas_would_read_as_missing_are_keys(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\nu1,NA,1\nu1,null,2\nu2,None,3\nu2,NA,4\n")
    assert read_interactions(tmp_path / "log.csv")["item"].tolist() == ["NA", "null", "None", "NA"]


def test_an_empty_csv_key_is_still_missing(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\nu1,,1\n")
    with pytest.raises(ValueError, match=r"column 'item' has 1 empty value"):
        read_interactions(tmp_path / "log.csv")


def test_a_key_column_mixing_text_and_numbers_is_refused(tmp_path):
    log = pd.DataFrame({"user": ["u1"] * 4, "item": [42, "42", 7, 8], "timestamp": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match=r"column 'item' mixes text and numbers \(row 2: '42'\)"):
        prepare_dataset(log, tmp_path / "out")


@pytest.mark.parametrize(("times", "message"), [("True\nu1,i2,False", "holds booleans"),
                                                ("inf\nu1,i2,1", r"row 1 .*: inf is not a finite time")])
def test_boolean_or_infinite_timestamps_are_refused(tmp_path, times, message):
    (tmp_path / "log.csv").write_text(f"user,item,timestamp\nu1,i1,{times}\n")
    with pytest.raises(ValueError, match=message):
        read_interactions(tmp_path / "log.csv")


def test_users_and_items_are_numbered_by_first_appearance_in_time(tmp_path):
    log = pd.DataFrame({"user": ["b", "a", "b"], "item": ["y", "x", "x"], "timestamp": [2, 1, 3]})
    ds = prepare_dataset(log, tmp_path / "out")
    assert ds.meta["user_keys"] == ["a", "b"] and ds.meta["item_keys"] == ["x", "y"]


# ----------------------------------------------------------------------------------------------
# The global-time 8:1:1 split


def test_split_cuts_the_global_time_order_8_1_1():
    # ten interactions, rows out of time order; by time: t=1 … 10
    log = pd.DataFrame(
        {
            "user": ["a", "b", "a", "c", "b", "a", "c", "b", "a", "c"],
            "item": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "timestamp": [10, 1, 9, 2, 3, 4, 5, 6, 7, 8],
        }
    )
    train, valid, test = split_by_time(log)
    assert train["timestamp"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert valid["item"].tolist() == [3]  # t = 9, user a
    assert test["item"].tolist() == [1]  # t = 10, user a: b and c have no valid / test item


def test_split_ties_keep_row_order():
    log = pd.DataFrame({"user": list("abcdefghij"), "item": range(10), "timestamp": [0] * 8 + [5, 5]})
    train, valid, test = split_by_time(log)
    assert (train["item"].tolist(), valid["item"].tolist(), test["item"].tolist()) == (list(range(8)), [8], [9])


def test_split_drops_repeated_rows_but_keeps_repeats_at_other_times():
    log = pd.DataFrame({"user": ["a"] * 4, "item": [1, 1, 1, 2], "timestamp": [1, 1, 2, 3]})
    train, valid, test = split_by_time(log, ratios=(1.0, 0.0, 0.0))
    assert train["item"].tolist() == [1, 1, 2] and valid.empty and test.empty


def test_a_user_may_have_several_test_items(tmp_path):
    log = pd.DataFrame({"user": ["a"] * 8 + ["b", "b"], "item": range(10), "timestamp": range(10)})
    ds = prepare_dataset(log, tmp_path / "out", ratios=(0.6, 0.2, 0.2))
    assert ds.test == {1: (), 2: (8, 9)} and ds.valid == {1: (6, 7), 2: ()}


def test_iso_datetime_timestamps_order_the_split(tmp_path):
    (tmp_path / "log.csv").write_text(
        "user,item,timestamp\n"
        + "".join(f"u{d % 3},i{d},2024-01-{d:02d}T08:00:00\n" for d in range(10, 1, -1))
        + "u0,i1,2024-01-01\n"
    )
    train, valid, test = split_by_time(read_interactions(tmp_path / "log.csv"))
    assert train["item"].tolist() == ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"]
    assert (valid["item"].tolist(), test["item"].tolist()) == (["i9"], ["i10"])


def test_train_only_is_used_for_cooccurrence(tmp_path, monkeypatch):
    seen = {}

    def spy(sequences, num_items, **kw):
        seen["sequences"] = [tuple(s) for s in sequences]
        return np.random.default_rng(0).standard_normal((num_items, 4))

    monkeypatch.setattr(prepare_module, "cooccurrence_embeddings", spy)
    ds = prepare_dataset(_log(), tmp_path / "out")
    assert seen["sequences"] == list(ds.train.values())


# ----------------------------------------------------------------------------------------------
# Item features


def test_item_features_file_replaces_cooccurrence(tmp_path):
    # features put items 0, 1 together and 2, 3 together; the log puts 0 next to 2 and 1 next to 3
    np.save(tmp_path / "f.npy", np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    log = pd.DataFrame({"user": [1, 1, 2, 2], "item": [0, 2, 1, 3], "timestamp": [1, 2, 3, 4]})
    ds = prepare_dataset(log, tmp_path / "out", item_features=tmp_path / "f.npy")
    sid = {key: ds.index[i] for i, key in enumerate(ds.meta["item_keys"])}
    assert sid[0][:3] == sid[1][:3] and sid[2][:3] == sid[3][:3] and sid[0][0] != sid[2][0]
    assert ds.meta["settings"]["embeddings"] == "item_features"


def test_item_keys_name_the_feature_rows(tmp_path):
    features = np.array([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])  # the last row is not in the log
    log = pd.DataFrame({"user": ["u", "u"], "item": ["x", "y"], "timestamp": [1, 2]})
    ds = prepare_dataset(log, tmp_path / "out", item_features=features, item_keys=["y", "x", "z"], levels=1)
    assert ds.meta["item_keys"] == ["x", "y"] and ds.index[0][0] != ds.index[1][0]


def test_item_missing_from_features_is_an_error(tmp_path):
    log = pd.DataFrame({"user": ["u", "u"], "item": ["x", "y"], "timestamp": [1, 2]})
    with pytest.raises(ValueError, match=r"1 item\(s\) of the log have no row .* \['y'\]"):
        prepare_dataset(log, tmp_path / "out", item_features=np.ones((1, 2)), item_keys=["x"])


def test_failure_leaves_no_files_in_out_dir(tmp_path):
    with pytest.raises(ValueError, match=r"must be a non-empty \[items, dim\] array"):
        prepare_dataset(_log(), tmp_path / "out", item_features=np.ones(9))  # 1-D: wrong shape
    assert _folder_is_empty(tmp_path / "out")


def test_folder_holding_another_dataset_is_refused(tmp_path):
    prepare_dataset(_log(), tmp_path / "out", name="first")
    with pytest.raises(ValueError, match="already holds another dataset"):
        prepare_dataset(_log(), tmp_path / "out", name="second")


# ----------------------------------------------------------------------------------------------
# Bad input


def test_unknown_extension_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"log\.json: unknown file type; expected one of"):
        read_interactions(tmp_path / "log.json")


def test_missing_column_is_an_error_listing_the_columns(tmp_path):
    (tmp_path / "log.csv").write_text("user_id,item,time\n1,2,3\n")
    with pytest.raises(ValueError, match=r"log\.csv: missing column\(s\) \['user', 'timestamp'\]; it has \['user_id'"):
        read_interactions(tmp_path / "log.csv")


def test_log_without_rows_is_an_error(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\n")
    with pytest.raises(ValueError, match=r"log\.csv: the log is empty"):
        read_interactions(tmp_path / "log.csv")


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "log.tsv").write_text("")
    with pytest.raises(ValueError, match=r"log\.tsv: the file is empty"):
        read_interactions(tmp_path / "log.tsv")


def test_null_value_is_an_error_naming_column_and_row(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\n1,2,3\n1,4,5\n2,,6\n")
    with pytest.raises(ValueError, match=r"log\.csv: column 'item' has 1 empty value\(s\), the first at row 3"):
        read_interactions(tmp_path / "log.csv")


def test_unparseable_timestamp_is_an_error_naming_the_row(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,timestamp\n1,2,2024-01-01\n1,3,yesterday\n")
    with pytest.raises(ValueError, match=r"log\.csv: column 'timestamp', row 2 .*'yesterday' is not a timestamp"):
        read_interactions(tmp_path / "log.csv")


def test_other_column_names_are_accepted(tmp_path):
    pd.DataFrame({"u": [1], "i": [2], "t": [3.5]}).to_parquet(tmp_path / "log.parquet")
    log = read_interactions(tmp_path / "log.parquet", user_col="u", item_col="i", time_col="t")
    assert log.columns.tolist() == ["user", "item", "timestamp"] and log.iloc[0].tolist() == [1, 2, 3.5]


@pytest.mark.parametrize(("content", "message"), [
    (b"user,item,timestamp\nu1,caf\xe9,1\n", r"not UTF-8 text"),
    (b"user,item,timestamp\nu1,i1,1\nu2,i2,2,extra\n", r"not a well-formed"),
])
def test_a_log_that_cannot_be_read_as_a_table_is_an_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "log.csv").write_bytes(content)
    with pytest.raises(ValueError, match=rf"log\.csv: {message}"):
        read_interactions(tmp_path / "log.csv")

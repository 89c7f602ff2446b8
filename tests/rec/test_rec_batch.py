"""Batch recommendation, in process: a user file in, each good user's top-K list out in input order
(exactly `recommend`'s), every bad row in the errors file with its user id, and an output that is
refused, or replaced whole, never mixed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from atspeed.rec import batch as batch_mod
from atspeed.rec.batch import (
    assemble,
    errors_path,
    plan_batches,
    read_users,
    recommend_batch,
    run_local,
    validate_rows,
)
from atspeed.rec.data import eval_cases
from atspeed.rec.recommend import load_recommender, recommend

K = 5


@pytest.fixture(scope="module")
def rec(target_dir, synthetic_dir):
    return load_recommender(target_dir, synthetic_dir)


@pytest.fixture(scope="module")
def good_users(synthetic) -> list[dict]:
    """Test users with 1-based histories, as a user file holds them; every other id a string."""
    cases = eval_cases(synthetic)[:13]
    return [{"user": f"u{c.user}" if i % 2 else c.user, "history": [x + 1 for x in c.history]}
            for i, c in enumerate(cases)]


BAD_LINES = [
    "this is not json",
    json.dumps({"user": "empty", "history": []}),
    json.dumps({"user": "unknown", "history": [1, 99999]}),
    json.dumps({"user": "no-history"}),
    json.dumps({"user": "text-items", "history": ["3", "4"]}),
]


def write_jsonl(path, users: list[dict], bad_lines: list[str] = ()) -> None:
    """Good users, with the bad lines spread between them (and a blank line, which is skipped)."""
    lines = [json.dumps(u) for u in users]
    for i, bad in enumerate(bad_lines):
        lines.insert(2 + 3 * i, bad)
    path.write_text("\n".join(lines) + "\n\n")


def zero_based(users: list[dict]) -> list[list[int]]:
    return [[x - 1 for x in u["history"]] for u in users]


# ----------------------------------------------------------------------------------------------
# Reading and checking


def test_parquet_and_jsonl_inputs_read_the_same_rows(tmp_path, good_users):
    users = [{"user": str(u["user"]), "history": u["history"]} for u in good_users]
    write_jsonl(tmp_path / "u.jsonl", users)
    pq.write_table(pa.Table.from_pylist(users), tmp_path / "u.parquet")
    a, b = read_users(tmp_path / "u.jsonl"), read_users(tmp_path / "u.parquet")
    assert a["user"].tolist() == b["user"].tolist() == [u["user"] for u in users]
    assert a["history"].tolist() == b["history"].tolist()


def test_malformed_jsonl_lines_become_rows_with_a_problem_not_an_exception(tmp_path, good_users):
    write_jsonl(tmp_path / "u.jsonl", good_users, ["{not json", "[1, 2]"])
    rows = read_users(tmp_path / "u.jsonl")
    assert len(rows) == len(good_users) + 2
    assert rows["problem"].notna().sum() == 2


def test_a_parquet_file_without_the_columns_is_refused(tmp_path):
    pq.write_table(pa.table({"id": [1], "items": [[1, 2]]}), tmp_path / "u.parquet")
    with pytest.raises(ValueError, match="missing column"):
        read_users(tmp_path / "u.parquet")


def test_bad_rows_are_reported_with_their_user_id_and_reason(tmp_path, good_users, synthetic):
    write_jsonl(tmp_path / "u.jsonl", good_users, BAD_LINES)
    good, errors = validate_rows(read_users(tmp_path / "u.jsonl"), synthetic.num_items)
    assert len(good) == len(good_users)
    reasons = dict(zip(errors["user"], errors["reason"], strict=True))
    assert reasons[None].startswith("malformed: not JSON")
    assert reasons["empty"] == "empty history"
    assert reasons["unknown"].startswith("unknown item: 99999")
    assert reasons["no-history"].startswith("malformed")
    assert reasons["text-items"].startswith("malformed")
    assert errors["row"].is_monotonic_increasing


def test_good_histories_become_zero_based_and_mixed_ids_become_strings(good_users, synthetic):
    rows = pd.DataFrame({"row": range(len(good_users)), "user": [u["user"] for u in good_users],
                         "history": [u["history"] for u in good_users], "problem": None})
    good, errors = validate_rows(rows, synthetic.num_items)
    assert errors.empty
    assert [tuple(h) for h in good["history"]] == [tuple(h) for h in zero_based(good_users)]
    assert good["user"].tolist() == [str(u["user"]) for u in good_users]


def test_integer_ids_stay_integers_next_to_a_missing_one(tmp_path, synthetic):
    (tmp_path / "u.jsonl").write_text('{"user": 7, "history": [1]}\n{"history": [2]}\n')
    good, errors = validate_rows(read_users(tmp_path / "u.jsonl"), synthetic.num_items)
    assert good["user"].tolist() == [7] and type(good["user"].tolist()[0]) is int
    assert errors["user"].tolist() == [None]


def test_a_user_id_beyond_64_bits_is_an_error_row_not_a_crash_after_decoding(tmp_path, synthetic):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [{"user": 2**64, "history": [1, 2]}, {"user": 7, "history": [3]}])
    good, errors = validate_rows(read_users(path), synthetic.num_items)
    assert good["user"].tolist() == [7]
    assert errors["reason"].tolist() == [f"malformed: user {2**64} does not fit a 64-bit integer; give it as a string"]


def test_a_line_that_is_not_utf8_is_an_error_row_and_merges_no_users(tmp_path, synthetic):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"user": "caf\xe9", "history": [1]}\n{"user": "caf\xe8", "history": [2]}\n'
                     b'{"user": "tea", "history": [3]}\n')
    good, errors = validate_rows(read_users(path), synthetic.num_items)
    assert good["user"].tolist() == ["tea"]
    assert errors["row"].tolist() == [0, 1]
    assert all(r.startswith("malformed: not UTF-8 text") for r in errors["reason"])


def test_a_repeated_user_is_an_error_and_its_first_row_is_kept(synthetic):
    rows = pd.DataFrame({"row": [0, 1, 2], "user": ["a", "b", "a"], "history": [[1], [2], [3]], "problem": None})
    good, errors = validate_rows(rows, synthetic.num_items)
    assert good["user"].tolist() == ["a", "b"] and list(good["history"][0]) == [0]
    assert errors["reason"].tolist() == ["duplicate user: first seen at row 0"]


def test_batches_are_planned_in_input_order_and_histories_cut_to_max_history():
    good = pd.DataFrame({"row": [0, 2, 3, 5, 8], "user": list("abcde"), "history": [tuple(range(30))] + [(1,)] * 4})
    plan = plan_batches(good, batch_size=2, max_history=20)
    assert plan["rows"].tolist() == [[0, 2], [3, 5], [8]]
    assert plan["histories"][0][0] == list(range(10, 30))


# ----------------------------------------------------------------------------------------------
# Decoding


def test_recommend_batch_is_recommend_on_the_planned_rows(rec, good_users):
    histories = zero_based(good_users)[:4]
    plan = pd.DataFrame({"batch": [0], "rows": [[10, 11, 12, 13]], "histories": [histories]})
    out = recommend_batch(rec, plan, K)
    ref = recommend(rec, histories, K, batch_size=4)
    assert out["row"].tolist() == [10, 11, 12, 13]
    assert out["items"].tolist() == ref.items  # 0-based between the files
    assert out["scores"].tolist() == ref.scores.tolist()


def test_assemble_refuses_a_missing_or_repeated_user():
    good = pd.DataFrame({"row": [0, 1], "user": ["a", "b"], "history": [(0,), (1,)]})
    once = pd.DataFrame({"row": [1, 0], "items": [[2], [1]], "scores": [[0.0], [0.0]]})
    assert assemble(good, once)["user"].tolist() == ["a", "b"]
    assert assemble(good, once)["items"].tolist() == [[1], [2]]
    for bad in (once.iloc[:1], pd.concat([once, once.iloc[:1]])):
        with pytest.raises(RuntimeError, match="nothing was written"):
            assemble(good, bad)


# ----------------------------------------------------------------------------------------------
# The in-process engine, end to end


def test_run_local_writes_recommends_lists_in_input_order_and_the_errors_beside(tmp_path, good_users, rec,
                                                                              target_dir, synthetic_dir):
    write_jsonl(tmp_path / "u.jsonl", good_users, BAD_LINES)
    result = run_local(tmp_path / "u.jsonl", tmp_path / "lists.parquet", target_dir, synthetic_dir, k=K,
                       batch_size=4, progress=False)
    assert (result.users, result.errors) == (len(good_users), len(BAD_LINES))
    lists = pd.read_parquet(result.output)
    ref = recommend(rec, zero_based(good_users), K, batch_size=4)
    assert lists["user"].tolist() == [str(u["user"]) for u in good_users]
    assert [list(x) for x in lists["items"]] == [[i + 1 for i in items] for items in ref.items]
    assert torch.equal(torch.from_numpy(np.stack(lists["scores"])), ref.scores)
    errors = pq.read_table(errors_path(result.output))
    assert errors.column("user").to_pylist() == [None, "empty", "unknown", "no-history", "text-items"]
    assert result.errors_output == tmp_path / "lists.errors.parquet"


def test_an_existing_output_is_refused_before_any_work(tmp_path, good_users, target_dir, synthetic_dir):
    write_jsonl(tmp_path / "u.jsonl", good_users)
    (tmp_path / "lists.errors.parquet").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite"):
        run_local(tmp_path / "u.jsonl", tmp_path / "lists.parquet", target_dir, synthetic_dir, k=K, progress=False)
    assert (tmp_path / "lists.errors.parquet").read_bytes() == b"old"


def test_overwrite_replaces_both_files_with_one_runs_output(tmp_path, good_users, target_dir, synthetic_dir):
    write_jsonl(tmp_path / "u.jsonl", good_users, BAD_LINES)
    out = tmp_path / "lists.parquet"
    run_local(tmp_path / "u.jsonl", out, target_dir, synthetic_dir, k=K, progress=False)
    write_jsonl(tmp_path / "u.jsonl", good_users[:3])
    run_local(tmp_path / "u.jsonl", out, target_dir, synthetic_dir, k=K, overwrite=True, progress=False)
    assert len(pd.read_parquet(out)) == 3 and pd.read_parquet(errors_path(out)).empty
    run_ids = {pq.read_schema(p).metadata[b"atspeed.run"] for p in (out, errors_path(out))}
    assert len(run_ids) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lists.errors.parquet", "lists.parquet", "u.jsonl"]


def test_a_failed_run_leaves_the_old_output_untouched(tmp_path, good_users, target_dir, synthetic_dir,
                                                      monkeypatch):
    write_jsonl(tmp_path / "u.jsonl", good_users)
    out = tmp_path / "lists.parquet"
    run_local(tmp_path / "u.jsonl", out, target_dir, synthetic_dir, k=K, progress=False)
    before = {p: p.read_bytes() for p in (out, errors_path(out))}

    def crash(*args, **kwargs):
        raise MemoryError("out of memory half way")

    monkeypatch.setattr(batch_mod, "decode_local", crash)
    with pytest.raises(MemoryError):
        run_local(tmp_path / "u.jsonl", out, target_dir, synthetic_dir, k=3, overwrite=True, progress=False)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lists.errors.parquet", "lists.parquet", "u.jsonl"]


def test_bad_settings_are_refused_before_reading_the_input(tmp_path, target_dir, synthetic_dir):
    missing = tmp_path / "nothing.jsonl"
    with pytest.raises(ValueError, match="needs a draft"):
        run_local(missing, tmp_path / "o.parquet", target_dir, synthetic_dir, method="speculative")
    with pytest.raises(FileNotFoundError, match="No model"):
        run_local(missing, tmp_path / "o.parquet", tmp_path, synthetic_dir)
    with pytest.raises(ValueError, match=r"\.parquet"):
        run_local(missing, tmp_path / "o.csv", target_dir, synthetic_dir)

"""Batch recommendation: a file of user histories in, each user's top-K items out.

The engine-independent half of `atspeed recommend --input ... --output ...`: reading and checking
the input, cutting it into decode batches, decoding one batch, and writing the result. `run_job`
is the job, with the decode step passed in: `run_local` decodes in this process, the Ray Data
engine (`ray_engine.run_ray`) runs the same `recommend_batch` in a pool of actors, so both give
identical lists.

Item ids are 1-based in the files (as in `sequential_*.txt`) and 0-based everywhere in between:
`validate_rows` converts on the way in, `_lists_table` on the way out, and nowhere else.

Input (`.parquet`, or `.jsonl` with one `{"user": ..., "history": [...]}` per line):
    user      any id, a string or an integer (unique)
    history   item ids, 1-based as in `sequential_*.txt`, oldest first (the last MAX_HISTORY are read)

Output, `lists.parquet` (one row per good input row, in input order):
    user      as given (ints stay ints; a mix of ints and strings is written as strings)
    items     K item ids, 1-based, best first
    scores    K beam scores (float32), best first

Errors, the sibling `lists.errors.parquet` (one row per bad input row, in input order):
    row       0-based input row (JSONL: 0-based line number)
    user      the user id as a string (null where the row had none)
    reason    "malformed: …", "empty history", "unknown item: …" or "duplicate user: …"

Why decode batches are planned up front: users are decoded `batch_size` at a time in input order
(bad rows left out), so whatever engine runs the batches, and however it groups them, every user
is decoded with the same batch companions and gets the same list, bit for bit.

Why the lists file is written last: both files are written to temporaries and renamed into place,
the errors file first, and a run that overwrites first removes the old lists file. So
`lists.parquet` is the commit marker: where it exists, it and its errors file come from one
complete run (both carry the same `atspeed.run` id in their Parquet metadata), never a mix.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from atspeed.decoding.checks import is_int
from atspeed.files import write_together
from atspeed.rec.data import MAX_HISTORY, count_ids, find_index_file, load_index, recent
from atspeed.rec.recommend import (
    Recommender,
    check_k,
    check_method,
    load_recommender,
    model_dir,
    recommend,
)

FORMATS = (".parquet", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class Job:
    """A checked input: good rows, error rows, and the decode batches over the good rows."""

    good: pd.DataFrame  # row, user, history (0-based item ids)
    errors: pd.DataFrame  # row, user, reason
    plan: pd.DataFrame  # batch, rows, histories: one decode batch per row


@dataclass(frozen=True)
class BatchResult:
    output: Path
    errors_output: Path
    users: int  # rows written to `output`
    errors: int  # rows written to `errors_output`
    seconds: float  # wall time of decoding (model loading included)

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds if self.seconds > 0 else float("inf")


# ----------------------------------------------------------------------------------------------
# Input


def read_users(path: str | os.PathLike) -> pd.DataFrame:
    """Read a user file into columns row, user, history, problem (a malformed JSONL line's reason).

    A JSONL line that is not a JSON object with "user" and "history" becomes a row with a
    `problem`, not an exception, so one bad line never stops a job. A Parquet file without the
    two columns is refused as a whole.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    raise ValueError(f"{path}: unknown input format {path.suffix!r}; use one of {', '.join(FORMATS)}.")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        names = pq.read_schema(path).names
    except pa.ArrowException as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e}).") from None
    missing = [c for c in ("user", "history") if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected 'user' and 'history' (1-based item ids).")
    table = pq.read_table(path, columns=["user", "history"])
    users, histories = table.column("user").to_pylist(), table.column("history").to_pylist()
    return _users_frame(range(len(users)), users, histories, [None] * len(users))


def _read_jsonl(path: Path) -> pd.DataFrame:
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1") or b"\0" in head:  # Parquet magic; text never holds NUL bytes
        raise ValueError(f"{path}: binary data (Parquet?), not JSON Lines text; a Parquet file needs the .parquet "
                         "extension.")
    rows = []
    with path.open("rb") as f:  # lines end at b"\n" only, as every JSON Lines tool counts them
        for row, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # replacing the bytes could merge two users' ids
                rows.append((row, None, None, f"malformed: not UTF-8 text ({e.reason} at byte {e.start})"))
                continue
            if line.strip():
                rows.append((row, *_parse_line(line)))
    return _users_frame(*(zip(*rows, strict=True) if rows else ([], [], [], [])))


def _users_frame(rows, users, histories, problems) -> pd.DataFrame:
    """Object columns, so that ints stay ints next to missing values (pandas would make them floats)."""
    return pd.DataFrame({"row": pd.Series(rows, dtype="int64"), "user": pd.Series(users, dtype=object),
                         "history": pd.Series(histories, dtype=object), "problem": pd.Series(problems, dtype=object)})


def _parse_line(line: str) -> tuple[object, object, str | None]:
    """(user, history, problem) of one JSONL line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, None, f"malformed: not JSON ({e.msg})"
    if not isinstance(obj, dict) or "user" not in obj or "history" not in obj:
        user = obj.get("user") if isinstance(obj, dict) else None
        return user, None, 'malformed: expected {"user": ..., "history": [...]}'
    return obj["user"], obj["history"], None


def validate_rows(users: pd.DataFrame, num_items: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `read_users` rows into good rows (history made 0-based) and error rows with a reason.

    Users must be unique: a repeated user is an error row (its first valid row is kept), so every user
    appears exactly once in the output.
    """
    users = users.assign(user=pd.Series(_one_id_type(users["user"].tolist()), index=users.index, dtype=object))
    good, errors, seen = [], [], {}
    for row, user, history, problem in users[["row", "user", "history", "problem"]].itertuples(index=False):
        reason = problem or _problem(user, history, num_items)
        if reason is None and user in seen:
            reason = f"duplicate user: first seen at row {seen[user]}"
        if reason is not None:
            errors.append((row, None if user is None else str(user), reason))
            continue
        seen[user] = row
        good.append((row, user, tuple(i - 1 for i in history)))  # the file's 1-based ids, 0-based from here
    return _frame(good, ["row", "user", "history"]), _frame(errors, ["row", "user", "reason"])


def _frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    """`row` as int64, the rest as object columns (ids keep their type, None stays None)."""
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
    return pd.DataFrame({name: pd.Series(col, dtype="int64" if name == "row" else object)
                         for name, col in zip(columns, cols, strict=True)})


def _one_id_type(users: list[object]) -> list[object]:
    """Ints stay ints; if any valid id is a string, every valid id becomes a string (one column type)."""
    if any(isinstance(u, str) for u in users):
        return [str(u) if is_int(u) else u for u in users]
    return users


def _problem(user: object, history: object, num_items: int) -> str | None:
    """Why a row cannot be decoded, or None."""
    if not (is_int(user) or isinstance(user, str)):
        return f"malformed: user must be a string or an integer, got {user!r}"
    if is_int(user) and not -(2**63) <= user < 2**63:  # the output's user column is int64
        return f"malformed: user {user} does not fit a 64-bit integer; give it as a string"
    if not isinstance(history, list | tuple) or not all(is_int(i) for i in history):
        return f"malformed: history must be a list of integer item ids, got {history!r}"[:200]
    if not history:
        return "empty history"
    bad = [i for i in history if not 1 <= i <= num_items]
    if bad:
        return f"unknown item: {bad[0]} is not in the catalogue (items are 1 … {num_items})"
    return None


def plan_batches(good: pd.DataFrame, batch_size: int, max_history: int = MAX_HISTORY) -> pd.DataFrame:
    """Decode batches over the good rows in input order: columns batch, rows, histories.

    Histories are cut to their last `max_history` items here, as `recommend` would, so only what
    is decoded travels to the workers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    rows, histories = good["row"].tolist(), good["history"].tolist()
    starts = range(0, len(rows), batch_size)
    return pd.DataFrame({
        "batch": range(len(starts)),
        "rows": [rows[s : s + batch_size] for s in starts],
        "histories": [[list(recent(h, max_history)) for h in histories[s : s + batch_size]] for s in starts],
    })


def prepare(input: str | os.PathLike, data_dir: str | os.PathLike, k: int, batch_size: int, *,
            allow_duplicate_ids: bool = False, max_history: int = MAX_HISTORY) -> Job:
    """Read and check `input` against `data_dir`'s catalogue; plan its decode batches."""
    num_items = catalogue_size(data_dir, k, allow_duplicate_ids=allow_duplicate_ids)
    good, errors = validate_rows(read_users(input), num_items)
    return Job(good, errors, plan_batches(good, batch_size, max_history))


def catalogue_size(data_dir: str | os.PathLike, k: int, *, allow_duplicate_ids: bool = False) -> int:
    """The number of items in `data_dir`'s catalogue, once `k` of them can be returned per user."""
    index = load_index(find_index_file(data_dir), allow_duplicate_ids=allow_duplicate_ids)
    check_k(k, len(index), count_ids(index))
    return len(index)


def check_settings(method: str, target_dir: str | os.PathLike, draft_dir: str | os.PathLike | None) -> None:
    """Refuse a bad method or a missing model folder before any input is read or worker started."""
    check_method(method, has_draft=draft_dir is not None)
    for path in (target_dir, draft_dir):
        if path is not None:
            model_dir(path)  # raises FileNotFoundError with the path


# ----------------------------------------------------------------------------------------------
# Decoding


def recommend_batch(
    rec: Recommender,
    plan: pd.DataFrame | Mapping[str, object],
    k: int,
    *,
    method: str = "tree",
    draft_beams: int | None = None,
    gamma: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Decode planned batches (rows of `plan_batches`): columns row, items (0-based), scores.

    Each planned batch is one `recommend` call, so the lists do not depend on how an engine groups
    planned batches. Relaxed speculative sampling is seeded per batch with `seed + batch`.
    """
    plan = pd.DataFrame(plan)
    rows, items, scores = [], [], []
    for batch, batch_rows, histories in plan[["batch", "rows", "histories"]].itertuples(index=False):
        histories = [[int(i) for i in h] for h in histories]
        out = recommend(rec, histories, k, method=method, batch_size=len(histories), draft_beams=draft_beams,
                        gamma=gamma, seed=seed + int(batch))
        rows += [int(r) for r in batch_rows]
        items += out.items
        scores += out.scores.tolist()
    return pd.DataFrame({"row": rows, "items": items, "scores": scores})


def decode_local(rec: Recommender, plan: pd.DataFrame, k: int, *, progress: bool = True, **settings) -> pd.DataFrame:
    """`recommend_batch` over every planned batch in this process, with a progress bar in users."""
    parts = []
    with tqdm(total=sum(len(r) for r in plan["rows"]), desc="recommend", unit="user", disable=not progress) as bar:
        for start in range(len(plan)):
            parts.append(recommend_batch(rec, plan.iloc[start : start + 1], k, **settings))
            bar.update(len(parts[-1]))
    return pd.concat(parts, ignore_index=True) if parts else empty_results()


def empty_results() -> pd.DataFrame:
    return pd.DataFrame({"row": pd.Series(dtype="int64"), "items": pd.Series(dtype=object),
                         "scores": pd.Series(dtype=object)})


def assemble(good: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The output rows (user, items, scores) in input order; every good row exactly once, or an error."""
    results = results.sort_values("row", kind="stable").reset_index(drop=True)
    expected = good["row"].to_numpy()
    got = results["row"].to_numpy()
    if len(got) != len(expected) or (got != expected).any():
        missing = sorted(set(expected.tolist()) - set(got.tolist()))[:5]
        raise RuntimeError(f"Decoding returned {len(got)} rows for {len(expected)} users (missing e.g. rows "
                           f"{missing}); nothing was written.")
    return pd.DataFrame({"user": good["user"].to_numpy(), "items": results["items"], "scores": results["scores"]})


# ----------------------------------------------------------------------------------------------
# Output


def errors_path(output: str | os.PathLike) -> Path:
    """`lists.parquet` -> `lists.errors.parquet`, beside it."""
    output = Path(output)
    return output.with_name(output.name[: -len(".parquet")] + ".errors.parquet")


def check_output(output: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an output that exists (unless `overwrite`) before any work is done."""
    output = Path(output)
    if output.suffix != ".parquet":
        raise ValueError(f"{output}: the output must be a .parquet file.")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output.parent}: no such folder for the output.")
    try:  # a folder we cannot write to is found now, not after decoding every user
        tempfile.TemporaryFile(dir=output.parent).close()
    except OSError as e:
        raise PermissionError(f"{output.parent}: cannot write the output there ({e.strerror}).") from None
    existing = [p for p in (output, errors_path(output)) if p.exists()]
    if existing and not overwrite:
        unfinished = "" if output.exists() else f" without {output.name} (left by a run that did not finish)"
        raise FileExistsError(f"{existing[0]} exists{unfinished}: choose another output path, or overwrite it "
                              "(overwrite=True, --overwrite).")


def write_outputs(lists: pd.DataFrame, errors: pd.DataFrame, output: str | os.PathLike, *,
                  overwrite: bool = False, metadata: Mapping[str, object] | None = None) -> tuple[Path, Path]:
    """Write the lists and errors files atomically, lists last (see the module docstring)."""
    output = Path(output)
    check_output(output, overwrite)
    meta = {"atspeed.run": uuid.uuid4().hex, **{f"atspeed.{k}": str(v) for k, v in (metadata or {}).items()}}
    tables = {errors_path(output): _errors_table(errors, meta), output: _lists_table(lists, meta)}
    # errors first, lists last; the old lists go just before: from then until the last rename there is
    # no result, never a mix
    write_together({path: (lambda tmp, t=table: _write_parquet(t, tmp)) for path, table in tables.items()},
                   remove_first=[output])
    return output, errors_path(output)


def _lists_table(lists: pd.DataFrame, meta: Mapping[str, str]) -> pa.Table:
    users = lists["user"].tolist()
    user_type = pa.string() if any(isinstance(u, str) for u in users) else pa.int64()
    schema = pa.schema([("user", user_type), ("items", pa.list_(pa.int64())), ("scores", pa.list_(pa.float32()))],
                       metadata=meta)
    items = [[int(i) + 1 for i in user_items] for user_items in lists["items"]]  # 1-based again, in the file
    return pa.table({"user": users, "items": items, "scores": lists["scores"].tolist()}, schema=schema)


def _errors_table(errors: pd.DataFrame, meta: Mapping[str, str]) -> pa.Table:
    schema = pa.schema([("row", pa.int64()), ("user", pa.string()), ("reason", pa.string())], metadata=meta)
    return pa.table({c: errors[c].tolist() for c in schema.names}, schema=schema)


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# The job, and the in-process engine

Decode = Callable[[pd.DataFrame], pd.DataFrame]  # planned batches -> rows (row, items, scores), any order


def run_job(
    input: str | os.PathLike,
    output: str | os.PathLike,
    target_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    draft_dir: str | os.PathLike | None,
    decode: Decode,
    *,
    k: int,
    method: str,
    batch_size: int,
    overwrite: bool = False,
    allow_duplicate_ids: bool = False,
    metadata: Mapping[str, object] | None = None,
) -> BatchResult:
    """The batch job whatever the engine: check the settings and the output, read and plan the input,
    `decode` the plan (model loading included in the time), check every user came back once, write."""
    check_settings(method, target_dir, draft_dir)
    check_output(output, overwrite)
    job = prepare(input, data_dir, k, batch_size, allow_duplicate_ids=allow_duplicate_ids)
    start = time.perf_counter()
    results = decode(job.plan)
    seconds = time.perf_counter() - start
    lists = assemble(job.good, results)
    metadata = {"k": k, "method": method, "batch_size": batch_size, **(metadata or {})}
    lists_path, errs_path = write_outputs(lists, job.errors, output, overwrite=overwrite, metadata=metadata)
    return BatchResult(lists_path, errs_path, users=len(lists), errors=len(job.errors), seconds=seconds)


def run_local(
    input: str | os.PathLike,
    output: str | os.PathLike,
    target_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    draft_dir: str | os.PathLike | None = None,
    *,
    k: int = 10,
    method: str = "tree",
    batch_size: int = 16,
    draft_beams: int | None = None,
    gamma: int = 3,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    allow_duplicate_ids: bool = False,
    progress: bool = True,
) -> BatchResult:
    """Top-`k` lists for every user of `input`, decoded in this process, written to `output`."""

    def decode(plan: pd.DataFrame) -> pd.DataFrame:
        rec = load_recommender(target_dir, data_dir, draft_dir, device=device,
                               allow_duplicate_ids=allow_duplicate_ids)
        return decode_local(rec, plan, k, method=method, draft_beams=draft_beams, gamma=gamma, seed=seed,
                            progress=progress)

    return run_job(input, output, target_dir, data_dir, draft_dir, decode, k=k, method=method,
                   batch_size=batch_size, overwrite=overwrite, allow_duplicate_ids=allow_duplicate_ids,
                   metadata={"engine": "local"})

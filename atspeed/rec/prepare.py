"""Bring your own data: an interaction log (user, item, timestamp) -> a dataset folder.

Why: the toolkit trains and decodes on the LC-Rec / AtSpeed format (`atspeed.rec.data`); this turns a
plain CSV or Parquet log into it the way the paper prepared Beauty:
1. all interactions sorted by one global clock and cut 8:1:1 by count into train / valid / test
   (a user may have 0, 1 or several valid / test items);
2. users numbered 1 … U and items 0 … I-1 by first appearance in that order (ties: row order);
3. item vectors from the caller's item features, else from co-occurrence in the TRAIN split only
   (valid / test would leak into the IDs), then semantic IDs by residual k-means plus a final
   code that makes every ID unique (`atspeed.rec.semantic_ids`);
4. everything is computed first and written last, atomically (`save_dataset`), with meta.json
   holding the source, the settings and the raw key of every item and user, so generated
   recommendations map back to real items: item id i is `meta["item_keys"][i]`, user u is
   `meta["user_keys"][u - 1]`.

CSV keys are read as text, exactly as written (`007` stays "007"); Parquet and DataFrame keys keep
their types. Timestamps may be numbers (any unit) or ISO 8601 datetimes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from atspeed.files import write_dir, write_texts
from atspeed.rec.data import (
    RecDataset,
    find_index_file,
    index_json,
    load_dataset,
    load_index,
    save_dataset,
    shared_ids,
    with_valid_in_train,
)
from atspeed.rec.semantic_ids import (
    add_disambiguation_level,
    cooccurrence_embeddings,
    ids_to_tokens,
    residual_kmeans_ids,
)

COLUMNS = ("user", "item", "timestamp")  # the columns of a checked log, in this order
RATIOS = (0.8, 0.1, 0.1)  # train / valid / test, as in the paper
CSV_SUFFIXES = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".tsv.gz": "\t"}

README = """Prepared by atspeed.rec.prepare from {source}.
{name}.index.json: item id -> {length} semantic-ID tokens; sequential_{{train,valid,test}}.txt:
`USER ITEM ...` (1-based items), split {ratios} by a global time order.
meta.json: settings, and the raw keys: item id i (item i + 1 in the .txt files) is
meta["item_keys"][i], user u is meta["user_keys"][u - 1].
"""


# ----------------------------------------------------------------------------------------------
# Reading


def read_interactions(
    path: str | os.PathLike, user_col: str = "user", item_col: str = "item", time_col: str = "timestamp"
) -> pd.DataFrame:
    """Read a CSV / TSV (optionally .gz) or Parquet log into columns user, item, timestamp.

    Errors name the file and say what to fix: unknown extension, missing columns, no rows, empty
    cells, timestamps that are neither numbers nor ISO datetimes.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".parquet":
        raw = pd.read_parquet(path)
    else:
        try:  # keys as text: the file's own spelling is the key
            raw = pd.read_csv(path, sep=CSV_SUFFIXES[suffix], dtype={user_col: str, item_col: str},
                              keep_default_na=False, na_values=[""])  # "NA", "null" ... are keys too
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path}: the file is empty; expected a header and one row per interaction.") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
        except pd.errors.ParserError as e:
            raise ValueError(f"{path}: not a well-formed {CSV_SUFFIXES[suffix]!r}-separated table: {e}") from None
    return check_log(raw, str(path), user_col=user_col, item_col=item_col, time_col=time_col)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*CSV_SUFFIXES, ".parquet"):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown file type; expected one of {[*CSV_SUFFIXES, '.parquet']}.")


def check_log(
    log: pd.DataFrame, source: str, user_col: str = "user", item_col: str = "item", time_col: str = "timestamp"
) -> pd.DataFrame:
    """The log's three columns renamed to user, item, timestamp, checked; rows keep their order."""
    cols = [user_col, item_col, time_col]
    missing = [c for c in cols if c not in log.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; it has {list(log.columns)}. "
            "Name the right ones with --user-col, --item-col, --time-col (Python: user_col=, item_col=, time_col=)."
        )
    if len(log) == 0:
        raise ValueError(f"{source}: the log is empty (no interactions).")
    for c in cols:
        null = log[c].isna().to_numpy()
        if null.any():
            row = int(np.argmax(null)) + 1
            raise ValueError(
                f"{source}: column {c!r} has {int(null.sum())} empty value(s), the first at row {row} "
                "(1-based, header not counted)."
            )
    for c in (user_col, item_col):
        text = log[c].map(lambda key: isinstance(key, str)).to_numpy(dtype=bool)
        if text.any() and not text.all():
            row = int(np.argmin(text) if text[0] else np.argmax(text))
            raise ValueError(f"{source}: column {c!r} mixes text and numbers (row {row + 1}: {log[c].iloc[row]!r}): "
                             "42 and '42' would be two keys; give every key one type.")
    out = log[cols].reset_index(drop=True)
    out.columns = list(COLUMNS)
    out["timestamp"] = _parse_times(out["timestamp"], source, time_col)
    return out


def _parse_times(times: pd.Series, source: str, col: str) -> pd.Series:
    """Numbers stay numbers; ISO 8601 strings become UTC datetimes. Both sort in time order."""
    if pd.api.types.is_datetime64_any_dtype(times):
        return pd.to_datetime(times, utc=True)
    if pd.api.types.is_bool_dtype(times) or any(isinstance(t, bool | np.bool_) for t in times):
        raise ValueError(f"{source}: column {col!r} holds booleans, not times.")
    as_number = times if pd.api.types.is_numeric_dtype(times) else pd.to_numeric(times, errors="coerce")
    if as_number.notna().all():
        infinite = ~np.isfinite(as_number.to_numpy(dtype=float))
        if infinite.any():
            row = int(np.argmax(infinite))
            raise ValueError(f"{source}: column {col!r}, row {row + 1} (1-based, header not counted): "
                             f"{times.iloc[row]} is not a finite time.")
        return as_number
    as_date = pd.to_datetime(times, errors="coerce", utc=True, format="ISO8601")
    if as_date.notna().all():
        return as_date
    # report against whichever reading fits more rows (a mix of both is an error too)
    parsed = as_date if as_date.notna().sum() >= as_number.notna().sum() else as_number
    row = int(np.argmax(parsed.isna().to_numpy()))
    raise ValueError(
        f"{source}: column {col!r}, row {row + 1} (1-based, header not counted): {times.iloc[row]!r} is not a "
        "timestamp; expected numbers or ISO 8601 datetimes such as 2024-01-31T12:00:00, all of one kind."
    )


# ----------------------------------------------------------------------------------------------
# Splitting


def split_by_time(
    log: pd.DataFrame, ratios: Sequence[float] = RATIOS
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / valid / test: the log (user, item, timestamp) in global time order, cut by count.

    Ties keep row order (stable sort); repeated (user, item, timestamp) rows count once. With n
    interactions the cuts fall at floor(0.8 n) and floor(0.9 n), so test takes the remainder.
    """
    if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {tuple(ratios)}.")
    log = log.drop_duplicates(subset=list(COLUMNS)).sort_values("timestamp", kind="stable").reset_index(drop=True)
    n = len(log)
    cuts = np.floor(np.cumsum(ratios)[:2] * n + 1e-9).astype(int)  # + 1e-9: 0.9 * 10 is 9, not 8.999…
    return log.iloc[: cuts[0]], log.iloc[cuts[0] : cuts[1]], log.iloc[cuts[1] :]


# ----------------------------------------------------------------------------------------------
# Preparing


def prepare_dataset(
    log: pd.DataFrame | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str = "custom",
    item_features: np.ndarray | str | os.PathLike | None = None,
    item_keys: Sequence[Hashable] | None = None,
    levels: int = 3,
    codes_per_level: int = 256,
    dim: int = 32,
    window: int = 3,
    ratios: Sequence[float] = RATIOS,
    seed: int = 0,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "timestamp",
) -> RecDataset:
    """Split, number, embed and index `log` (a DataFrame or a file), then write it to `out_dir`.

    `item_features` ([N, D] array or a .npy path): row r describes the item whose raw key is
    `item_keys[r]` (default: r). Keys are matched as text, so 42 and "42" are the same item; every
    item in the log needs a row, other rows are ignored. Without features, item vectors come from
    co-occurrence in the train split. Nothing is written unless every step succeeded.
    """
    _check_name(name)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, name)
    if isinstance(log, pd.DataFrame):
        source = "<DataFrame>"
        log = check_log(log, source, user_col=user_col, item_col=item_col, time_col=time_col)
    else:
        source = str(log)
        log = read_interactions(log, user_col=user_col, item_col=item_col, time_col=time_col)
    splits = split_by_time(log, ratios)
    ordered = pd.concat(splits)  # global time order
    user_keys, item_keys_used = list(pd.unique(ordered["user"])), list(pd.unique(ordered["item"]))
    user_id = {k: u for u, k in enumerate(user_keys, start=1)}
    item_id = {k: i for i, k in enumerate(item_keys_used)}
    train, valid, test = (_sequences(s, user_id, item_id) for s in splits)

    settings: dict = {"levels": levels, "codes_per_level": codes_per_level, "seed": seed}
    if item_features is None:  # train only: valid / test items must not shape the IDs
        vectors = cooccurrence_embeddings(list(train.values()), len(item_id), dim=dim, window=window, seed=seed)
        settings |= {"embeddings": "cooccurrence", "dim": dim, "window": window}
    else:
        vectors = _feature_rows(item_features, item_keys, item_keys_used)
        settings |= {"embeddings": "item_features", "features": _describe(item_features), "dim": vectors.shape[1]}
    codes = residual_kmeans_ids(vectors, levels=levels, codes_per_level=codes_per_level, seed=seed)

    settings |= {"ratios": [float(r) for r in ratios], "columns": [user_col, item_col, time_col]}
    meta = {
        "source": source,
        "prepared_by": "atspeed.rec.prepare",
        "synthetic": False,
        "settings": settings,
        "interactions": dict(zip(("train", "valid", "test"), (len(s) for s in splits), strict=True)),
        "item_keys": [_plain(k) for k in item_keys_used],  # item id i -> raw key
        "user_keys": [_plain(k) for k in user_keys],  # user u -> raw key at u - 1
    }
    ds = RecDataset(name=name, index=ids_to_tokens(codes), train=train, valid=valid, test=test, meta=meta)
    ratio_text = ":".join(f"{r:g}" for r in ratios)
    readme = README.format(source=source, name=name, length=levels + 1, ratios=ratio_text)
    save_dataset(ds, out_dir, readme=readme)
    return ds


def fix_index(data_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[Path, int]:
    """Make every semantic ID of `data_dir`'s index unique, so that every item can be recommended.

    Items that share an ID (LC-Rec indexes have some) get one more code that tells them apart
    (`semantic_ids.add_disambiguation_level`); every ID grows by one token, so models trained on the
    old index must be retrained. The fixed dataset goes to the new folder `out_dir` (the other files
    copied as they are), or replaces the index in place when `out_dir` is None; either is written
    whole or not at all. Returns the new index file and the number of items that shared an ID.
    """
    data_dir = Path(data_dir)
    index_file = find_index_file(data_dir)
    index = load_index(index_file, allow_duplicate_ids=True)
    shared = sum(len(items) for items in shared_ids(index).values())
    if not shared:
        raise ValueError(f"{index_file}: every semantic ID is already unique; nothing to fix.")
    fixed = add_disambiguation_level(index)
    note = {"by": "atspeed.rec.prepare.fix_index", "length": len(next(iter(fixed.values()))),
            "items_that_shared_an_id": shared}
    if out_dir is None:
        write_texts(data_dir, {index_file.name: index_json(fixed), **_index_notes(data_dir, note)})
        return index_file, shared
    return _copy_with_index(data_dir, index_file, index_json(fixed), Path(out_dir), note=note), shared


def reindex(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    levels: int = 3,
    codes_per_level: int = 256,
    dim: int = 32,
    window: int = 3,
    seed: int = 0,
    include_valid: bool = False,
    name: str | None = None,
) -> Path:
    """Copy `data_dir` to the new folder `out_dir` with semantic IDs learnt from its train split
    (with `include_valid`, from train + valid: for a final fit on train + valid before a test),
    under the dataset name `name` (`<name>.index.json`; default: the old name). Another name keeps
    it apart from the original where names choose models (committed models are `<name>-target`).

    The IDs are what `prepare_dataset` makes without item features: co-occurrence embeddings of
    the TRAIN sequences only (test must not shape them), residual k-means, a last code that
    makes every ID unique. Why: an index made from item text (LC-Rec's Beauty) groups items that
    read alike; one made from co-occurrence groups items bought by the same users, which is what the
    next item depends on (Beauty, measured: README). Items that never occur in those sequences get
    seeded random IDs. Models trained on the old index must be retrained. Returns the new index file.
    """
    if name is not None:
        _check_name(name)
    data_dir = Path(data_dir)
    index_file = find_index_file(data_dir)
    ds = load_dataset(data_dir, allow_duplicate_ids=True)  # its IDs are replaced, shared ones included
    if include_valid:
        ds = with_valid_in_train(ds)
    vectors = cooccurrence_embeddings(list(ds.train.values()), ds.num_items, dim=dim, window=window, seed=seed)
    codes = residual_kmeans_ids(vectors, levels=levels, codes_per_level=codes_per_level, seed=seed)
    new_file = index_file.name if name is None else f"{name}.index.json"
    note = {"by": "atspeed.rec.prepare.reindex", "length": levels + 1, "levels": levels,
            "codes_per_level": codes_per_level, "dim": dim, "window": window, "seed": seed,
            "include_valid": include_valid}
    return _copy_with_index(data_dir, index_file, index_json(ids_to_tokens(codes)), Path(out_dir), new_file, note)


def _copy_with_index(
    data_dir: Path, index_file: Path, index_text: str, out_dir: Path, new_file: str | None = None,
    note: dict | None = None,
) -> Path:
    """Write the new folder `out_dir`: `data_dir`'s files, its index replaced by `index_text` (in a
    file named `new_file`, default the old name) and `note` added to its description; whole or not at all."""
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: give a new folder for the dataset with its new index.")
    new_file = new_file or index_file.name
    notes = _index_notes(data_dir, note) if note else {}

    def write(tmp: Path) -> None:
        for path in data_dir.iterdir():
            if path.is_file() and path != index_file and path.name not in notes:
                shutil.copy2(path, tmp / path.name)
        for name, text in {**notes, new_file: index_text}.items():
            (tmp / name).write_text(text)

    write_dir(out_dir, write)
    return out_dir / new_file


def _index_notes(data_dir: Path, note: dict) -> dict[str, str]:
    """`data_dir`'s meta.json and README.txt (those it has), saying how its index was replaced: copied
    as they were, they would describe the old index."""
    notes = {}
    if (data_dir / "meta.json").exists():
        meta = json.loads((data_dir / "meta.json").read_text())
        meta["index_history"] = [*meta.get("index_history", []), note]
        notes["meta.json"] = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    if (data_dir / "README.txt").exists():
        notes["README.txt"] = ((data_dir / "README.txt").read_text().rstrip("\n") + f"\nThe index was then "
                               f"replaced by {note['by']}: item id -> {note['length']} semantic-ID tokens "
                               "(meta.json: index_history).\n")
    return notes


def _check_name(name: str) -> None:
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise ValueError(f"name must be a plain file-name stem, got {name!r}.")


def _check_out_dir(out_dir: Path, name: str) -> None:
    """A second index file would make the folder unreadable, so refuse before doing any work."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder.")
    other = [p.name for p in sorted(out_dir.glob("*.index.json")) if p.name != f"{name}.index.json"]
    if other:
        stem = other[0][: -len(".index.json")]
        raise ValueError(f"{out_dir} already holds another dataset ({other}); use an empty folder or name={stem!r}.")


def _sequences(split: pd.DataFrame, user_id: dict, item_id: dict) -> dict[int, tuple[int, ...]]:
    """Every user (1 … U), with their items of this split in time order (possibly none)."""
    seqs: dict[int, list[int]] = {u: [] for u in user_id.values()}
    for user, item in zip(split["user"], split["item"], strict=True):
        seqs[user_id[user]].append(item_id[item])
    return {u: tuple(items) for u, items in seqs.items()}


def _feature_rows(
    features: np.ndarray | str | os.PathLike, keys: Sequence[Hashable] | None, items: list[Hashable]
) -> np.ndarray:
    """[I, D] features of `items` (in item-id order), looked up by key as text."""
    x = np.load(features, allow_pickle=False) if isinstance(features, (str, os.PathLike)) else np.asarray(features)
    where = _describe(features)
    if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0:
        raise ValueError(f"item_features ({where}) must be a non-empty [items, dim] array, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"item_features ({where}) must hold finite numbers.")
    keys = list(range(len(x))) if keys is None else list(keys)
    if len(keys) != len(x):
        raise ValueError(f"item_keys has {len(keys)} keys but item_features ({where}) has {len(x)} rows.")
    row = {str(k): r for r, k in enumerate(keys)}
    if len(row) != len(keys):
        raise ValueError("item_keys repeat a key (keys are compared as text).")
    absent = [k for k in items if str(k) not in row]
    if absent:
        raise ValueError(
            f"{len(absent)} item(s) of the log have no row in item_features ({where}), e.g. {absent[:5]}; "
            "pass item_keys, the raw item key of each row."
        )
    return x[[row[str(k)] for k in items]].astype(np.float64)


def _describe(features: object) -> str:
    return str(features) if isinstance(features, (str, os.PathLike)) else "array"


def _plain(key: Hashable) -> object:
    """A raw key as JSON can hold it (numpy scalars -> Python; anything exotic -> its text)."""
    if isinstance(key, np.generic):
        key = key.item()
    return key if isinstance(key, (str, int, float, bool)) else str(key)

"""Generative-recommendation datasets in the LC-Rec / AtSpeed on-disk format.

A dataset folder holds:
- `<name>.index.json`: item id ("0" … "n-1") -> semantic ID, a list of L tokens (L = 4 here).
- `sequential_{train,valid,test}.txt`: one line per user, `USER ITEM ITEM ...`, chronological.
  Items are 1-based in these files (item k is key str(k - 1) in the index); a line may hold no items.
- optionally `meta.json` ({"synthetic": true, ...}) and `README.txt`, written for generated data.

In memory every item id is 0-based (the index key), so the loaders shift by one and the writer
shifts back. Errors name the file and line so a broken file is fixed, not guessed at.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from atspeed.files import write_texts

_TOKEN = re.compile(r"<[^<>\s]+>")  # one semantic-ID token, as the tokenizer cuts text into them

SPLITS = ("train", "valid", "test")
EVAL_SPLITS = ("test", "valid")  # the splits `eval_cases` evaluates on
MAX_HISTORY = 20  # the paper's code truncates histories to the last 20 items

SemanticID = tuple[str, ...]
Sequences = dict[int, tuple[int, ...]]  # user -> 0-based item ids, oldest first


@dataclass(frozen=True)
class RecDataset:
    name: str
    index: dict[int, SemanticID]  # item id (0 … n-1) -> L tokens
    train: Sequences
    valid: Sequences
    test: Sequences
    meta: dict = field(default_factory=dict)  # e.g. {"synthetic": True, "seed": 0, ...}

    @property
    def num_items(self) -> int:
        return len(self.index)

    @property
    def users(self) -> list[int]:
        return sorted(set(self.train) | set(self.valid) | set(self.test))

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic", False))


@dataclass(frozen=True)
class Sample:
    """One next-item prediction: the user's recent items (oldest first) and the item that follows."""

    user: int
    history: tuple[int, ...]
    target: int


@dataclass(frozen=True)
class EvalCase:
    """One evaluated user: recent items and the set of held-out items that count as hits."""

    user: int
    history: tuple[int, ...]
    truth: frozenset[int]


# ----------------------------------------------------------------------------------------------
# Reading


class _Pairs(list):
    """A JSON object as its (key, value) pairs, in order (json.loads would keep only a repeated key's last)."""


def load_index(path: str | os.PathLike, *, allow_duplicate_ids: bool = False) -> dict[int, SemanticID]:
    """Read `<name>.index.json`; keys must be "0" … "n-1" and every ID must have the same length.

    Two items sharing a semantic ID cannot be told apart by generation, so that is an error
    unless `allow_duplicate_ids` (then decoding maps a shared ID to its lowest item id, and the
    other items can never be recommended); `atspeed data fix-index` makes every ID unique.
    """
    path = Path(path)
    try:
        pairs = json.loads(path.read_text(), object_pairs_hook=_Pairs)  # every key, repeats included
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    if not isinstance(pairs, _Pairs) or not pairs:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping item id -> list of tokens.")
    index: dict[int, SemanticID] = {}
    for key, tokens in pairs:
        if not (isinstance(key, str) and _is_number(key) and str(int(key)) == key):  # "01" would overwrite "1"
            raise ValueError(f"{path}: item key {key!r} is not a non-negative integer written plainly (0, 1, 2 ...).")
        if int(key) in index:
            raise ValueError(f"{path}: item key {key!r} appears twice.")
        if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) and t for t in tokens)):
            raise ValueError(f"{path}: item {key}: expected a non-empty list of token strings, got {tokens!r}.")
        bad = [t for t in tokens if not _TOKEN.fullmatch(t)]
        if bad:
            raise ValueError(f"{path}: item {key}: token {bad[0]!r} is not of the form <...> (no spaces or angle "
                             "brackets inside), which the tokenizer's text form of a history needs.")
        index[int(key)] = tuple(tokens)
    if sorted(index) != list(range(len(index))):
        missing = sorted(set(range(len(index))) - set(index))[:5]
        raise ValueError(f"{path}: item keys must be 0 … {len(index) - 1} without gaps; missing e.g. {missing}.")
    lengths = Counter(len(t) for t in index.values())
    if len(lengths) != 1:
        usual = lengths.most_common(1)[0][0]
        item, tokens = next((i, t) for i, t in index.items() if len(t) != usual)
        raise ValueError(f"{path}: item {item} has {len(tokens)} tokens {list(tokens)} but the other IDs have "
                         f"{usual}; all semantic IDs must have the same length.")
    if not allow_duplicate_ids:
        _check_unique_ids(index, path)
    return dict(sorted(index.items()))


def shared_ids(index: Mapping[int, SemanticID]) -> dict[SemanticID, list[int]]:
    """Semantic IDs held by more than one item, each with its items (ascending)."""
    owners: dict[SemanticID, list[int]] = defaultdict(list)
    for item, sid in sorted(index.items()):
        owners[sid].append(item)
    return {sid: items for sid, items in owners.items() if len(items) > 1}


def _check_unique_ids(index: Mapping[int, SemanticID], path: Path | str) -> None:
    dups = shared_ids(index)
    if dups:
        sid, items = next(iter(dups.items()))
        n_items = sum(len(v) for v in dups.values())
        folder = Path(path).parent if isinstance(path, Path) else Path("DIR")
        raise ValueError(
            f"{path}: {len(dups)} semantic IDs are shared by {n_items} items, e.g. items {items} all have "
            f"{''.join(sid)}. Generation cannot tell such items apart: `atspeed data fix-index {folder} --out "
            "FIXED` writes a copy whose IDs are unique (one more code per ID). Loading it anyway "
            "(allow_duplicate_ids=True, --allow-duplicate-ids) maps a shared ID to its lowest item id, so the "
            "other items can never be recommended."
        )


def _is_number(text: str) -> bool:
    """Digits 0-9 only, few enough for int() ("²" is a digit to str.isdigit, and int() refuses it)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def load_split(path: str | os.PathLike, num_items: int) -> Sequences:
    """Read one `sequential_*.txt` file into user -> 0-based items (1-based on disk)."""
    path = Path(path)
    seqs: Sequences = {}
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue  # blank line (e.g. a trailing newline): no user
            bad = [x for x in fields if not (_is_number(x) and int(x) > 0)]
            if bad:
                raise ValueError(f"{path}, line {lineno}: {bad[0]!r} is not a positive integer (`USER ITEM ITEM ...`, "
                                 "users and items counted from 1).")
            user, items = int(fields[0]), [int(x) for x in fields[1:]]
            if user in seqs:
                raise ValueError(f"{path}, line {lineno}: user {user} already has a line in this file.")
            for k in items:
                if not 1 <= k <= num_items:
                    raise ValueError(
                        f"{path}, line {lineno}: item {k} is not in the index (items are 1-based here: "
                        f"1 … {num_items} map to index keys 0 … {num_items - 1})."
                    )
            seqs[user] = tuple(k - 1 for k in items)
    return seqs


def count_ids(index: Mapping[int, SemanticID]) -> int:
    """The distinct semantic IDs of a catalogue: the most items one top-K list can hold (items that
    share an ID are one beam; see load_index's allow_duplicate_ids)."""
    return len(set(index.values()))


def find_index_file(root: str | os.PathLike) -> Path:
    root = Path(root)
    found = sorted(root.glob("*.index.json"))
    if len(found) != 1:
        raise ValueError(f"{root}: expected exactly one *.index.json file, found {[p.name for p in found]}.")
    return found[0]


def load_dataset(root: str | os.PathLike, *, allow_duplicate_ids: bool = False) -> RecDataset:
    """Read a dataset folder (index + the three splits, plus meta.json if present)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No dataset folder at {root}.")
    index_path = find_index_file(root)
    index = load_index(index_path, allow_duplicate_ids=allow_duplicate_ids)
    splits = {s: load_split(root / f"sequential_{s}.txt", len(index)) for s in SPLITS}
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    name = index_path.name[: -len(".index.json")]
    return RecDataset(name=name, index=index, meta=meta, **splits)


# ----------------------------------------------------------------------------------------------
# Samples


def recent(history: Sequence[int], max_history: int = MAX_HISTORY) -> tuple[int, ...]:
    """The last `max_history` items of `history` (all of them if fewer; none if `max_history` is 0):
    what a model reads, here, in training, in evaluation and in batch jobs."""
    return tuple(history[len(history) - min(len(history), max_history):])


def train_samples(ds: RecDataset, max_history: int = MAX_HISTORY) -> list[Sample]:
    """Every prefix of a user's train sequence predicts the item after it (empty prefixes skipped)."""
    return [
        Sample(user=u, history=recent(seq[:t], max_history), target=seq[t])
        for u, seq in sorted(ds.train.items())
        for t in range(1, len(seq))
    ]


def with_valid_in_train(ds: RecDataset) -> RecDataset:
    """The final fit before a test evaluation: each user's valid items appended to their train
    sequence, and no valid split left (nothing can be validated on what was trained on)."""
    users = set(ds.train) | set(ds.valid)
    train = {u: (*ds.train.get(u, ()), *ds.valid.get(u, ())) for u in sorted(users)}
    return replace(ds, train={u: seq for u, seq in train.items() if seq}, valid={})


@dataclass(frozen=True)
class Window:
    """A stretch of one user's train sequence read in one forward pass: every item after the first
    is predicted from the items before it in the window (causal language modelling)."""

    user: int
    items: tuple[int, ...]  # >= 2 items
    start: int  # position of items[0] in the user's train sequence


def train_windows(ds: RecDataset, max_history: int = MAX_HISTORY) -> list[Window]:
    """The train split as windows of at most `max_history` + 1 items that predict each item after a
    user's first exactly once: the predictions of `train_samples`, in one pass per window instead of
    one per item. A longer sequence is cut from its end, one item of overlap between windows, so an
    item early in a later window sees fewer than `max_history` items (at least one)."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}.")
    windows = []
    for u, seq in sorted(ds.train.items()):
        stop = len(seq)
        while stop > 1:
            start = max(0, stop - max_history - 1)
            windows.append(Window(user=u, items=tuple(seq[start:stop]), start=start))
            stop = start + 1  # the window's first item is only context: the next window predicts it
    return windows


def eval_cases(ds: RecDataset, split: str = "test", max_history: int = MAX_HISTORY) -> list[EvalCase]:
    """Users with >= 1 item in `split`; history = everything before that split (last `max_history`).

    test: history = train + valid, truth = all test items. valid: history = train, truth = valid.
    Users with no item before the split are left out: `recommend` needs a history to start from.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}.")
    before = ("train",) if split == "valid" else ("train", "valid")
    held_out = getattr(ds, split)
    cases = []
    for u in sorted(held_out):
        if not held_out[u]:
            continue
        history = tuple(i for s in before for i in getattr(ds, s).get(u, ()))
        if not history:
            continue
        cases.append(EvalCase(user=u, history=recent(history, max_history), truth=frozenset(held_out[u])))
    if not cases:
        raise ValueError(f"Dataset {ds.name!r}: no user has a {split} item, so there is nothing to evaluate.")
    return cases


# ----------------------------------------------------------------------------------------------
# Writing


def save_dataset(
    ds: RecDataset, root: str | os.PathLike, *, readme: str | None = None, allow_duplicate_ids: bool = False
) -> Path:
    """Write `ds` in the on-disk format, every file atomically (temp file, then rename).

    All files are written to temporaries first and renamed only once all of them succeeded, so an
    error (or a crash) never leaves a half-written file under a real name.
    """
    if not allow_duplicate_ids:
        _check_unique_ids(ds.index, f"dataset {ds.name!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    users = ds.users
    contents = {f"{ds.name}.index.json": index_json(ds.index)}
    for s in SPLITS:
        contents[f"sequential_{s}.txt"] = _split_text(getattr(ds, s), users, ds.num_items)
    if ds.meta:
        contents["meta.json"] = json.dumps(ds.meta, indent=2, sort_keys=True) + "\n"
    if readme is not None:
        contents["README.txt"] = readme
    write_texts(root, contents)
    return root


def index_json(index: Mapping[int, SemanticID]) -> str:
    """The text of `<name>.index.json` for `index`."""
    return json.dumps({str(i): list(index[i]) for i in sorted(index)})


# In a trained model's folder: the fingerprint of the item index it was trained on. Two indexes of one
# catalogue can use the same tokens for different items (`atspeed data reindex` with another seed),
# and a model read with the wrong one would recommend the wrong items without any error.
MODEL_INDEX_FILE = "item_index.json"


def index_sha256(index: Mapping[int, SemanticID]) -> str:
    """Fingerprint of an item index: equal for equal item -> semantic ID maps, whatever their file."""
    return hashlib.sha256(index_json(index).encode()).hexdigest()


def check_index(folder: Path, index: Mapping[int, SemanticID], role: str, index_file: str | os.PathLike) -> None:
    """A model whose folder records the item index it was trained on (MODEL_INDEX_FILE) is only read
    with that index: the same tokens may name other items in another one. Folders without it pass."""
    recorded = folder / MODEL_INDEX_FILE
    if not recorded.exists():
        return
    try:
        trained_on = json.loads(recorded.read_text())["index_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{recorded}: not a valid item-index fingerprint ({e}).") from e
    if trained_on != index_sha256(index):
        raise ValueError(f"The {role} in {folder} was trained on another item index than {index_file} (its "
                         f"{MODEL_INDEX_FILE} records another fingerprint): its tokens would name other items. "
                         "Use the dataset it was trained on, or retrain it on this one.")


def splits_sha256(ds: RecDataset) -> str:
    """Fingerprint of a dataset's train / valid / test interactions, whatever its name and item index:
    equal for a dataset and its `atspeed data reindex` copy, so results computed on item ids (SASRec,
    popularity) can be matched to it."""
    h = hashlib.sha256()
    for split in SPLITS:
        seqs = getattr(ds, split)
        h.update(f"{split}\n".encode())
        h.update("".join(f"{u} {' '.join(map(str, seqs[u]))}\n" for u in sorted(seqs)).encode())
    return h.hexdigest()


def model_index_json(index: Mapping[int, SemanticID]) -> str:
    """The text of a model folder's MODEL_INDEX_FILE for a model trained on `index`."""
    return json.dumps({"items": len(index), "index_sha256": index_sha256(index)}) + "\n"


def _split_text(seqs: Mapping[int, Sequence[int]], users: Iterable[int], num_items: int) -> str:
    lines = []
    for u in users:
        items = seqs.get(u, ())
        if any(not 0 <= i < num_items for i in items):
            raise ValueError(f"user {u}: item ids must be 0 … {num_items - 1} in memory, got {list(items)}.")
        lines.append(" ".join(str(x) for x in (u, *(i + 1 for i in items))))
    return "".join(line + "\n" for line in lines)


def first_users(ds: RecDataset, n: int) -> RecDataset:
    """The same catalogue with only the first `n` users (sorted ids) of every split: a smaller run."""
    keep = set(ds.users[:n])
    return replace(ds, **{split: {u: seq for u, seq in getattr(ds, split).items() if u in keep} for split in SPLITS})

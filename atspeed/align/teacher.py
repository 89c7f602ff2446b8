"""Teacher data for draft alignment: the target's top-K beam-search items for every training prompt.

The alignment losses compare draft and target on the sequences the target itself would recommend
(AtSpeed, section 3), so these lists are generated once, before training, and cached on disk:

    out_dir/
      meta.json                        what the cache was made from: K, dataset, prompts, target
      chunks/chunk-00003.safetensors   prompts [C] (their indices), items [C, K], scores [C, K]
      teacher.safetensors              after the merge: history_items [P, H] (-1 padded),
                                       history_lengths [P], items [P, K] int64, scores [P, K] float32

Prompts are the distinct histories of `train_samples(dataset)`, in first-seen order. Lists come
from `recommend(method="tree")`: trie-constrained, batched, exactly HF's beam search.

Resumable: chunk i holds prompts [i * C, (i + 1) * C) and is written atomically (temporary file,
then rename), so a file under a chunk's name is always complete; a rerun only computes the chunks
that are missing and refuses a folder made with other settings. Chunks are independent, so another
runner (e.g. one Ray task per chunk) can produce them with `compute_chunk` + `save_chunk` and
finish with `merge_chunks`; `generate_teacher_data` is that loop on one process.
No pickle anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from atspeed.files import write_bytes
from atspeed.rec.data import MAX_HISTORY, RecDataset, train_samples
from atspeed.rec.recommend import Recommendations, Recommender, recommend

FORMAT = "atspeed-teacher-v1"
META_FILE = "meta.json"
TEACHER_FILE = "teacher.safetensors"
CHUNK_DIR = "chunks"
# what each setting a resumed run must share with the cache means, for the refusal's message
MUST_MATCH = {
    "format": "in another format",
    "k": "with another number of beams",
    "max_history": "with another history length",
    "chunk_size": "with another chunk size",
    "dataset": "for another dataset",
    "num_prompts": "for other training prompts",
    "prompts_sha256": "for other training prompts",
    "target_sha256": "by another target (its weights differ)",
}


@dataclass(frozen=True)
class TeacherData:
    """The target's top-K items (best first) and beam scores for each distinct training history."""

    histories: list[tuple[int, ...]]  # [P] 0-based item ids, oldest first
    items: Tensor  # [P, K] int64 item ids
    scores: Tensor  # [P, K] float32 beam scores (log-probability / length)
    meta: dict

    @property
    def k(self) -> int:
        return self.items.shape[1]

    def __len__(self) -> int:
        return len(self.histories)

    def rows(self) -> dict[tuple[int, ...], int]:
        """history -> row of items / scores."""
        return {h: i for i, h in enumerate(self.histories)}


# ---------------------------------------------------------------------------------------------
# what the cache is made of
# ---------------------------------------------------------------------------------------------


def teacher_prompts(dataset: RecDataset, max_history: int = MAX_HISTORY) -> list[tuple[int, ...]]:
    """The distinct training histories, in first-seen order (users sorted, then time)."""
    return list(dict.fromkeys(s.history for s in train_samples(dataset, max_history)))


def plan_chunks(num_prompts: int, chunk_size: int) -> list[range]:
    """Chunk i = prompt indices [i * chunk_size, (i + 1) * chunk_size), the last one shorter."""
    return [range(i, min(i + chunk_size, num_prompts)) for i in range(0, num_prompts, chunk_size)]


def teacher_meta(
    rec: Recommender, dataset: RecDataset, prompts: Sequence[Sequence[int]], *, k: int, chunk_size: int,
    max_history: int = MAX_HISTORY,
) -> dict:
    """The settings the chunks depend on; a resumed run must match them (see MUST_MATCH)."""
    return {
        "format": FORMAT,
        "k": k,
        "max_history": max_history,
        "chunk_size": chunk_size,
        "dataset": dataset.name,
        "num_prompts": len(prompts),
        "prompts_sha256": sha256_json([list(p) for p in prompts]),
        "target": str(getattr(rec.target.config, "_name_or_path", "") or ""),
        "target_sha256": weights_sha256(rec.target),
    }


def weights_sha256(model: PreTrainedModel) -> str:
    """Fingerprint of a model's weights (names, dtypes, bytes): tells which target made the lists."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sha256_json(value: object) -> str:
    """Fingerprint of a JSON value (lists of ints and strings): the same value always gives the same hash."""
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# one chunk: compute, save, find the missing ones
# ---------------------------------------------------------------------------------------------


Ranker = Callable[[list[tuple[int, ...]]], Recommendations]  # histories -> top-k lists, in order


def compute_chunk(
    rec: Recommender, prompts: Sequence[Sequence[int]], chunk: range, *, k: int, batch_size: int = 64,
    rank: Ranker | None = None,
) -> dict[str, Tensor]:
    """The target's top-k lists for prompts[chunk]: prompts [C] (indices), items [C, k], scores [C, k].

    `rank` decodes the histories elsewhere (e.g. `atspeed.rec.ray_engine.rank_histories` on a Ray
    cluster); by default they are decoded here, by tree attention (the same lists either way)."""
    histories = [tuple(prompts[i]) for i in chunk]
    if rank is None:
        out = recommend(rec, histories, k, method="tree", batch_size=batch_size)
    else:
        out = rank(histories)
    return {
        "prompts": torch.tensor(list(chunk), dtype=torch.int64),  # [C]
        "items": torch.tensor(out.items, dtype=torch.int64).view(len(histories), k),  # [C, k]
        "scores": out.scores.float().view(len(histories), k),  # [C, k]
    }


def chunk_path(out_dir: str | os.PathLike, index: int) -> Path:
    return Path(out_dir) / CHUNK_DIR / f"chunk-{index:05d}.safetensors"


def save_chunk(out_dir: str | os.PathLike, index: int, tensors: dict[str, Tensor]) -> Path:
    """Write chunk `index` atomically: a file under its name is always complete."""
    path = chunk_path(out_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, save({name: t.contiguous() for name, t in tensors.items()}))
    return path


def pending_chunks(out_dir: str | os.PathLike, plan: Sequence[range]) -> list[int]:
    """Indices of the chunks in `plan` that have no file yet."""
    return [i for i in range(len(plan)) if not chunk_path(out_dir, i).exists()]



# ---------------------------------------------------------------------------------------------
# the cache folder
# ---------------------------------------------------------------------------------------------


def open_cache(
    out_dir: str | os.PathLike, meta: dict, what: str = "teacher data", must_match: dict[str, str] = MUST_MATCH
) -> Path:
    """Create `out_dir` with meta.json, or check that an existing one was made with the same settings
    (those in `must_match`, which says what a mismatch means; `what` names the cache)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / META_FILE
    if path.exists():
        check_meta(json.loads(path.read_text()), meta, out_dir, what, must_match)
    else:
        write_bytes(path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out_dir


def check_meta(old: dict, new: dict, out_dir: Path, what: str, must_match: dict[str, str]) -> None:
    """Refuse a cache folder made with other settings than this run's, saying which and what it means."""
    for key, why in must_match.items():
        if old.get(key) != new.get(key):
            there, here = repr(old.get(key)), repr(new.get(key))
            if key == "target_sha256":  # name the targets, not just their fingerprints
                there, here = (f"{m.get('target')!r} (weights {str(m.get(key))[:12]}…)" for m in (old, new))
            raise ValueError(f"{out_dir} holds {what} made {why}: {key}={there} there, {key}={here} in this run. "
                             "Use another folder, or delete this one to start over.")


def merge_chunks(out_dir: str | os.PathLike, prompts: Sequence[Sequence[int]]) -> Path:
    """Join every chunk into teacher.safetensors (atomically), then delete the chunks."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / META_FILE).read_text())
    plan = plan_chunks(meta["num_prompts"], meta["chunk_size"])
    missing = pending_chunks(out_dir, plan)
    if missing:
        raise RuntimeError(f"{out_dir}: {len(missing)} chunks are missing (e.g. {missing[:5]}); generate them first.")
    parts = [load_file(chunk_path(out_dir, i)) for i in range(len(plan))]
    order = torch.cat([p["prompts"] for p in parts])  # [P]
    if not torch.equal(order, torch.arange(meta["num_prompts"])):
        raise RuntimeError(f"{out_dir}: the chunks do not cover prompts 0 … {meta['num_prompts'] - 1} in order.")
    if sha256_json([list(p) for p in prompts]) != meta["prompts_sha256"]:
        raise ValueError(f"{out_dir}: these prompts are not the ones the chunks were made for.")
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64)  # [P]
    padded = torch.full((len(prompts), int(lengths.max())), -1, dtype=torch.int64)  # [P, H]
    for row, p in enumerate(prompts):
        padded[row, : len(p)] = torch.tensor(p, dtype=torch.int64)
    tensors = {
        "history_items": padded,
        "history_lengths": lengths,
        "items": torch.cat([p["items"] for p in parts]),  # [P, K]
        "scores": torch.cat([p["scores"] for p in parts]),  # [P, K]
    }
    write_bytes(out_dir / TEACHER_FILE, save(tensors, metadata={"format": FORMAT}))
    shutil.rmtree(out_dir / CHUNK_DIR, ignore_errors=True)
    return out_dir


def generate_teacher_data(
    rec: Recommender,
    dataset: RecDataset,
    out_dir: str | os.PathLike,
    *,
    k: int = 20,
    batch_size: int = 64,
    chunk_size: int = 1024,
    max_history: int = MAX_HISTORY,
    progress: bool = True,
    rank: Ranker | None = None,
) -> Path:
    """Top-`k` lists of `rec.target` for every distinct training history of `dataset`, cached in `out_dir`.

    Reruns resume: finished chunks are kept, a finished cache is returned as is; a folder made with
    another k, dataset, chunk_size, max_history or target is refused. Returns `out_dir`.
    `rank` (see compute_chunk) decodes each chunk elsewhere, e.g. on Ray: chunks stay the unit of
    resumption, so use large chunks there (each call starts an actor pool).
    """
    if k < 1 or chunk_size < 1 or batch_size < 1:
        raise ValueError(f"k, batch_size and chunk_size must be >= 1, got {k}, {batch_size}, {chunk_size}.")
    prompts = teacher_prompts(dataset, max_history)
    if not prompts:
        raise ValueError(f"Dataset {dataset.name!r} has no training prompt (no user has two train items).")
    out_dir = open_cache(out_dir, teacher_meta(rec, dataset, prompts, k=k, chunk_size=chunk_size,
                                               max_history=max_history))
    if (out_dir / TEACHER_FILE).exists():
        return out_dir
    plan = plan_chunks(len(prompts), chunk_size)
    todo = pending_chunks(out_dir, plan)
    done = len(prompts) - sum(len(plan[i]) for i in todo)
    with tqdm(total=len(prompts), initial=done, desc="teacher", unit="prompt", disable=not progress) as bar:
        for i in todo:
            save_chunk(out_dir, i, compute_chunk(rec, prompts, plan[i], k=k, batch_size=batch_size, rank=rank))
            bar.update(len(plan[i]))
    return merge_chunks(out_dir, prompts)


def load_teacher_data(out_dir: str | os.PathLike) -> TeacherData:
    """Read a finished cache (teacher.safetensors + meta.json)."""
    out_dir = Path(out_dir)
    path = out_dir / TEACHER_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"No teacher data at {path}: run generate_teacher_data (it resumes an unfinished folder)."
        )
    meta = json.loads((out_dir / META_FILE).read_text())
    t = load_file(path)
    histories = [tuple(row[:n]) for row, n in zip(t["history_items"].tolist(), t["history_lengths"].tolist(),
                                                  strict=True)]
    return TeacherData(histories=histories, items=t["items"], scores=t["scores"], meta=meta)

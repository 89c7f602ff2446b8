"""The frozen target's logits on fixed training rows: computed once, then read at every step.

Off-policy alignment compares the draft with the frozen target on rows that are the same at every
step, epoch, seed and method: AtSpeed-S / -R and WordKD on each prompt's teacher items, TVD-KD on
its ground-truth items. So the target's logits there are computed once and kept. With
`mask_to_valid` a loss reads them only at the tokens the trie allows at each item position (losses.py
masks the rest to -inf): at position t, the children of the trie node the item's first t tokens
reach. Rows of one prompt that share a prefix share that node (position 0 is the root, all first
codes, for every row), so one entry per (prompt, node) holds all that a loss reads:

    out_dir/
      meta.json                         what the logits were made from (see MUST_MATCH)
      chunks/chunk-00003.safetensors    prompts [3C, 4C): keys [E], counts [E], values [sum of counts]
      logits.safetensors                after the merge: keys [E] (sorted), offsets [E + 1], values [T]

    key = prompt * (trie nodes) + node; values[offsets[e] : offsets[e + 1]] are the target's logits
    at entry e's children, in token order (the order of answer_allowed's True entries)

Beauty (4-token IDs, 91 first codes, 20 teacher items per prompt): 43 entries and 787 values per
prompt, 3.8 KB in float32 with the keys, instead of 290 KB for the dense [21, 4, 863] logits.

Values keep the target's dtype, as its forward gave them: a loss reads exactly the numbers the
cache was made with. A step that recomputes them gets the same up to float rounding: a row's logits
already move in the last bits with the rows that share its batch (padding changes the summation
order: 4.8e-6 for rows of the Beauty target in float32, measured between two batches).

Made like the teacher data (teacher.py): chunks of prompts written atomically, a rerun computes only
the missing ones and refuses a folder made by another target or for another item index or other
rows; the chunks are then merged into one file. No pickle: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from atspeed.align.rows import answer_allowed, answer_logits, encode_rows
from atspeed.align.teacher import (
    CHUNK_DIR,
    META_FILE,
    chunk_path,
    open_cache,
    pending_chunks,
    plan_chunks,
    save_chunk,
    sha256_json,
    weights_sha256,
)
from atspeed.files import write_with
from atspeed.rec.recommend import Recommender
from atspeed.rec.trie import ItemTrie, walk

FORMAT = "atspeed-target-logits-v1"
LOGITS_FILE = "logits.safetensors"
# what each setting a folder must share with the run means, for the refusal's message
MUST_MATCH = {
    "format": "in another format",
    "rows": "for other rows",
    "num_prompts": "for other training prompts (another dataset or teacher data)",
    "prompts_sha256": "for other training prompts (another dataset or teacher data)",
    "items_sha256": "for other items per prompt (other teacher data, or another dataset's ground truth)",
    "index_sha256": "for another item index or tokenizer",
    "chunk_size": "with another chunk size",
    "target_sha256": "by another target (its weights differ)",
}


@dataclass(frozen=True)
class TargetLogits:
    """The target's logits at the trie-allowed tokens of each (prompt, trie node) of some rows."""

    keys: Tensor  # [E] int64, sorted: prompt * (trie nodes) + node
    offsets: Tensor  # [E + 1] int64: entry e's values are values[offsets[e] : offsets[e + 1]]
    values: Tensor  # [T] the target's dtype: logits at the node's children, in token order
    meta: dict

    def to(self, device: torch.device | str) -> TargetLogits:
        return TargetLogits(self.keys.to(device), self.offsets.to(device), self.values.to(device), self.meta)

    def read(self, trie: ItemTrie, prompts: Tensor, items: Tensor, allowed: Tensor) -> Tensor:
        """[N, L, V]: the logits of rows prompts [N] + items [N, L] at the `allowed` [N, L, V] tokens
        (answer_allowed), -inf elsewhere; what answer_logits(target, rows)[:, :L] gives there."""
        keys = node_keys(trie, prompts, items)  # [N, L]
        entry = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)  # [N, L]
        if not torch.equal(self.keys[entry], keys):
            raise ValueError(f"These rows are not all in the target logits made for {self.meta.get('rows')!r} rows: "
                             "they hold each prompt's teacher items or its ground truth, never other items.")
        start, count = self.offsets[entry], self.offsets[entry + 1] - self.offsets[entry]  # [N, L]
        if not torch.equal(count, allowed.sum(-1)):
            raise ValueError("The target logits were made for another item trie: allowed tokens differ.")
        out = torch.full(allowed.shape, float("-inf"), dtype=self.values.dtype, device=self.values.device)
        out[allowed] = self.values[segments(start.flatten(), count.flatten())]
        return out


def node_keys(trie: ItemTrie, prompts: Tensor, items: Tensor) -> Tensor:
    """[N, L]: prompt * (trie nodes) + the node that row n's first t item tokens reach, t = 0 … L-1."""
    nodes = torch.stack([walk(trie, items[:, :t]) for t in range(items.shape[1])], dim=1)  # [N, L]
    return prompts[:, None] * int(trie.depth_start[-1]) + nodes


def segments(start: Tensor, count: Tensor) -> Tensor:
    """[sum(count)]: start[0], …, start[0] + count[0] - 1, start[1], … (the pieces, one after another)."""
    ends = count.cumsum(0)  # [E]
    return torch.repeat_interleave(start - (ends - count), count) + torch.arange(int(ends[-1]), device=start.device)


# ---------------------------------------------------------------------------------------------
# computing them
# ---------------------------------------------------------------------------------------------


def node_entries(trie: ItemTrie, prompts: Tensor, items: Tensor, logits: Tensor) -> dict[str, Tensor]:
    """One entry per (prompt, trie node) that rows prompts [R] + items [R, L] reach, given their
    answer logits [R, L, V]: keys [E] (sorted), counts [E], values [sum of counts] (the logits of
    the first row that reaches the node, at its children)."""
    keys = node_keys(trie, prompts, items).flatten()  # [R * L]
    unique, inverse = torch.unique(keys, return_inverse=True)  # [E]
    order = torch.arange(len(keys), device=keys.device)
    first = torch.full_like(unique, len(keys)).scatter_reduce_(0, inverse, order, "amin")  # [E]
    allowed = answer_allowed(trie, items, logits.shape[-1]).flatten(0, 1)[first]  # [E, V]
    return {"keys": unique, "counts": allowed.sum(-1), "values": logits.flatten(0, 1)[first][allowed]}


def compute_chunk(
    rec: Recommender, prompts: Sequence[Sequence[int]], items: Sequence[Sequence[int]], chunk: range, *,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """node_entries of rows prompts[p] + items[p][j] for p in `chunk`, `batch_size` prompts per forward."""
    parts = []
    for start in range(chunk.start, chunk.stop, batch_size):
        batch = range(start, min(start + batch_size, chunk.stop))
        prompt_of = [p for p in batch for _ in items[p]]
        rows = encode_rows(rec.vocab, [prompts[p] for p in batch], [p - start for p in prompt_of],
                           [i for p in batch for i in items[p]]).to(rec.target.device)
        with torch.no_grad():
            logits = answer_logits(rec.target, rows)  # [R, L + 1, V]
        L = rows.answers.shape[1] - 1
        prompt = torch.tensor(prompt_of, device=rows.answers.device)  # [R]
        parts.append(node_entries(rec.trie, prompt, rows.answers[:, :L], logits[:, :L]))
    return {name: torch.cat([part[name] for part in parts]).cpu() for name in ("keys", "counts", "values")}


def target_logits_meta(
    rec: Recommender, prompts: Sequence[Sequence[int]], items: Sequence[Sequence[int]], *, rows: str, chunk_size: int
) -> dict:
    """What the logits depend on; a folder must match it (MUST_MATCH) to be resumed or read."""
    vocab = rec.vocab
    return {
        "format": FORMAT,
        "rows": rows,
        "num_prompts": len(prompts),
        "prompts_sha256": sha256_json([list(p) for p in prompts]),
        "items_sha256": sha256_json([list(i) for i in items]),
        "index_sha256": sha256_json([vocab.tokens.tolist(), vocab.bos_token_id, vocab.eos_token_id,
                                     vocab.pad_token_id, rec.trie.vocab_size]),
        "chunk_size": chunk_size,
        "target": str(getattr(rec.target.config, "_name_or_path", "") or ""),
        "target_sha256": weights_sha256(rec.target),
    }


def merge_chunks(out_dir: str | os.PathLike, chunks: int) -> Path:
    """Join the chunks into logits.safetensors (atomically), then delete them."""
    out_dir = Path(out_dir)
    parts = [load_file(chunk_path(out_dir, i)) for i in range(chunks)]
    keys = torch.cat([p["keys"] for p in parts])  # [E]
    if not bool((keys[1:] > keys[:-1]).all()):
        raise RuntimeError(f"{out_dir}: the chunks' keys are not in order; delete the folder to start over.")
    tensors = {"keys": keys, "offsets": F.pad(torch.cat([p["counts"] for p in parts]).cumsum(0), (1, 0)),
               "values": torch.cat([p["values"] for p in parts])}
    write_with(out_dir / LOGITS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    shutil.rmtree(out_dir / CHUNK_DIR, ignore_errors=True)
    return out_dir


def generate_target_logits(
    rec: Recommender,
    prompts: Sequence[Sequence[int]],
    items: Sequence[Sequence[int]],
    out_dir: str | os.PathLike,
    *,
    rows: str,
    chunk_size: int = 1024,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """`rec.target`'s logits on the rows prompts[p] + items[p][j], at the trie-allowed tokens, in `out_dir`.

    `rows` names them in meta.json and messages ("teacher", "ground-truth"). Reruns resume: finished
    chunks are kept, a finished folder is returned as is; a folder made by another target or for
    another index or other rows is refused. Returns `out_dir`."""
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}.")
    meta = target_logits_meta(rec, prompts, items, rows=rows, chunk_size=chunk_size)
    out_dir = open_cache(out_dir, meta, "target logits", MUST_MATCH)
    if (out_dir / LOGITS_FILE).exists():
        return out_dir
    plan = plan_chunks(len(prompts), chunk_size)
    todo = pending_chunks(out_dir, plan)
    done = len(prompts) - sum(len(plan[i]) for i in todo)
    with tqdm(total=len(prompts), initial=done, desc=f"target logits ({rows})", unit="prompt",
              disable=not progress) as bar:
        for i in todo:
            save_chunk(out_dir, i, compute_chunk(rec, prompts, items, plan[i], batch_size=batch_size))
            bar.update(len(plan[i]))
    return merge_chunks(out_dir, len(plan))


def load_target_logits(out_dir: str | os.PathLike) -> TargetLogits:
    """Read a finished folder (logits.safetensors + meta.json)."""
    out_dir = Path(out_dir)
    path = out_dir / LOGITS_FILE
    if not path.exists():
        raise FileNotFoundError(f"No target logits at {path}: run generate_target_logits (it resumes an "
                                "unfinished folder).")
    t = load_file(path)
    return TargetLogits(t["keys"], t["offsets"], t["values"], json.loads((out_dir / META_FILE).read_text()))

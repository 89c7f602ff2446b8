"""Top-K recommendation with a trained recommender: histories in, K valid items per user out.

One entry point, `recommend`, for every decoding method, so evaluation, the CLI, batch jobs and
teacher-data generation all decode the same way:

    hf                    HF `generate(num_beams=K)`: the reference beam search
    tree                  tree-attention beam search (exactly HF's result)
    speculative           speculative beam search, strict verification (exactly HF's result)
    hf-sample             HF `generate(do_sample=True, num_beams=K)`: the reference beam sampling
    speculative-relaxed   beam sampling with the paper's relaxed verification (a sample, not HF's)

Every method is constrained by the item trie (draft and target alike), generates the L tokens of
one item, and returns the K items best first with their beam scores. The fast methods call the
decoding core's entry points (`atspeed.hf`), never the original package's API (`atspeed.beamsd`),
and every method yields the same result type (`TreeBeamOutput`: sequences, scores, stats).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from atspeed.decoding.checks import check_int, is_int
from atspeed.decoding.speculative import DraftSchedule
from atspeed.hf.engine import ENGINES
from atspeed.hf.generate import TreeBeamOutput, generate_with_tree_attention
from atspeed.hf.speculative import generate_speculative
from atspeed.rec.data import (
    MAX_HISTORY,
    SemanticID,
    check_index,
    count_ids,
    find_index_file,
    load_index,
    recent,
)
from atspeed.rec.tokenizer import ItemVocab, decode_items, encode_prompts, item_vocab
from atspeed.rec.trie import ItemTrie, TrieLogitsProcessor, build_trie
from atspeed.timing import Timer

METHODS = ("hf", "tree", "speculative", "hf-sample", "speculative-relaxed")
# small recommenders trained on the synthetic dataset, shipped for the demo (see its README)
PRETRAINED = Path(__file__).resolve().parent / "pretrained"
PROMPT_BUCKET = 32  # prompt tokens: GPU prompts are left-padded to a multiple of this
SPECULATIVE = ("speculative", "speculative-relaxed")
SAMPLING = ("hf-sample", "speculative-relaxed")  # seeded draws, not the K best: ranked by score after


@dataclass(frozen=True)
class Recommender:
    """A target (and optional draft) with the tokenizer and catalogue they were trained on."""

    target: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    index: Mapping[int, SemanticID]
    vocab: ItemVocab
    trie: ItemTrie
    draft: PreTrainedModel | None = None

    @property
    def num_items(self) -> int:
        return len(self.index)

    @cached_property
    def num_ids(self) -> int:
        """Distinct semantic IDs: the longest list of distinct items beam search can return."""
        return count_ids(self.index)


@dataclass
class Recommendations:
    """K items per user (best first), their scores, and what decoding them cost."""

    items: list[list[int]]  # [U][K] item ids
    scores: torch.Tensor  # [U, K] beam scores (log-probability / length)
    seconds: float = 0.0  # wall time of all decoding calls
    target_calls: float = 0.0  # target forward passes per user (a batch's calls count for each of its users)
    rounds: int = 0  # speculative: each user's draft-verify rounds, summed over users
    accepted_levels: int = 0  # speculative: each user's accepted drafted levels, summed over users
    per_batch: list[dict] = field(default_factory=list)


def merge(parts: Sequence[Recommendations]) -> Recommendations:
    """One result from the results of consecutive user slices (in order)."""
    users = [len(p.items) for p in parts]
    return Recommendations(
        items=[items for p in parts for items in p.items],
        scores=torch.cat([p.scores for p in parts]),
        seconds=sum(p.seconds for p in parts),
        target_calls=sum(p.target_calls * n for p, n in zip(parts, users, strict=True)) / max(1, sum(users)),
        rounds=sum(p.rounds for p in parts),
        accepted_levels=sum(p.accepted_levels for p in parts),
        per_batch=[b for p in parts for b in p.per_batch],
    )


def check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, role: str = "model") -> None:
    """A model only reads the tokenizer it was trained with: same size and the same special tokens."""
    cfg = model.config
    if cfg.vocab_size != len(tokenizer):
        raise ValueError(
            f"The {role} has vocab_size={cfg.vocab_size} but the tokenizer has {len(tokenizer)} tokens: they were "
            "not trained together. Load the tokenizer saved with the model."
        )
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        ours, theirs = getattr(tokenizer, name), getattr(cfg, name, None)
        if theirs is not None and ours is not None and _ids(theirs) != _ids(ours):
            raise ValueError(f"The {role}'s {name}={theirs} but the tokenizer's is {ours}: vocabularies differ.")


def _ids(x: int | Sequence[int]) -> set[int]:
    return {int(x)} if isinstance(x, int) else {int(i) for i in x}


def build_recommender(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    index: Mapping[int, SemanticID],
    draft: PreTrainedModel | None = None,
) -> Recommender:
    """Check that the models, tokenizer and catalogue fit together; build the item trie."""
    check_vocabulary(target, tokenizer, "target")
    if draft is not None:
        check_vocabulary(draft, tokenizer, "draft")
    vocab = item_vocab(tokenizer, index)
    trie = build_trie(vocab.tokens, len(tokenizer)).to(target.device)
    return Recommender(target.eval(), tokenizer, index, vocab, trie, draft.eval() if draft is not None else None)


def load_recommender(
    target_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    draft_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_duplicate_ids: bool = False,
) -> Recommender:
    """Load a saved target (folder with model + tokenizer), optional draft, and the dataset's item index."""
    index_file = find_index_file(data_dir)
    index = load_index(index_file, allow_duplicate_ids=allow_duplicate_ids)
    folder = model_dir(target_dir)
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"{folder}: no tokenizer.json; a model folder holds the tokenizer it was trained with.")
    tokenizer = _load(folder, "tokenizer", AutoTokenizer.from_pretrained)
    for role, path in (("target", target_dir), ("draft", draft_dir)):
        if path is not None:
            check_index(model_dir(path), index, role, index_file)
    target = load_model(target_dir, device, dtype)
    draft = load_model(draft_dir, device, dtype) if draft_dir is not None else None
    return build_recommender(target, tokenizer, index, draft)


def committed_models(data_dir: str | os.PathLike) -> tuple[Path, Path | None] | None:
    """The committed target (and draft, if there is one) trained on `data_dir`'s dataset: folders
    `<name>-target` / `<name>-draft` under PRETRAINED, `<name>` from its `<name>.index.json`; None
    when none was committed for it. Lets `atspeed evaluate --data DIR` run without training."""
    name = find_index_file(data_dir).name.removesuffix(".index.json")
    target, draft = PRETRAINED / f"{name}-target", PRETRAINED / f"{name}-draft"
    if not (target / "config.json").exists():
        return None
    return target, draft if (draft / "config.json").exists() else None


def model_dir(path: str | os.PathLike) -> Path:
    """A model folder, or a training output folder holding `final/`."""
    path = Path(path)
    if (path / "final" / "config.json").exists():
        return path / "final"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"No model at {path}: expected a folder with config.json (or final/config.json).")
    return path


def check_weights(folder: Path) -> None:
    """Weights are read from safetensors files only (never a pickle), and each file must be complete."""
    files = sorted(folder.glob("*.safetensors"))
    if not files and any(folder.glob("pytorch_model*.bin")):
        raise ValueError(
            f"{folder}: the weights are in pytorch_model.bin (a pickle), and atspeed only loads safetensors. If you "
            "trust the file, convert it once: python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{folder}', use_safetensors=False).save_pretrained('{folder}')\""
        )
    if not files:
        raise FileNotFoundError(f"{folder}: no model.safetensors (the model's weights).")
    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{file}: not a complete safetensors file ({e}).") from None


def load_model(path: str | os.PathLike, device: str | torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """A saved target or draft (a model folder or a training output folder), weights from safetensors only."""
    folder = model_dir(path)
    check_weights(folder)
    load = partial(AutoModelForCausalLM.from_pretrained, dtype=dtype, use_safetensors=True)
    return _load(folder, "model", load).to(device).eval()


def _load(folder: Path, what: str, load: Callable[[Path], object]):
    """`load(folder)`; a broken file fails with the folder named (loaders raise many exception types)."""
    try:
        return load(folder)
    except Exception as e:
        raise ValueError(f"{folder}: cannot load the {what}: {' '.join(str(e).split())}") from e


def check_method(method: str, *, has_draft: bool) -> None:
    """A known decoding method, and a draft for the speculative ones."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method in SPECULATIVE and not has_draft:
        raise ValueError(f"Method {method!r} needs a draft model: load one with the target (--draft).")


def check_k(k: int, num_items: int, num_ids: int | None = None) -> None:
    """K distinct items per user must exist in the catalogue: at most one per semantic ID (`num_ids`,
    data.count_ids; default: every item has its own)."""
    if not is_int(k):
        raise ValueError(f"k must be an integer, got {k!r}.")
    if num_ids is not None and num_ids < num_items and num_ids < k <= num_items:
        raise ValueError(f"k must be between 1 and the number of distinct semantic IDs ({num_ids}; "
                         f"{num_items - num_ids} of the {num_items} items share an ID with another), got {k}.")
    if not 1 <= k <= num_items:
        raise ValueError(f"k must be between 1 and the number of items ({num_items}), got {k}.")


def check_histories(histories: Sequence[Sequence[int]], num_items: int) -> None:
    """Every history holds at least one item, all in the catalogue; the error names the user (row) and item."""
    if not _is_list(histories):
        raise ValueError(f"histories must be a list of item-id lists, got {type(histories).__name__}.")
    for row, history in enumerate(histories):
        if not _is_list(history):
            raise ValueError(f"History {row}: expected a list of item ids, got {history!r}.")
        if len(history) == 0:
            raise ValueError(f"History {row} is empty: recommendations are made from at least one item.")
        for item in history:
            if not (is_int(item) and 0 <= item < num_items):
                raise ValueError(
                    f"History {row}: item {item!r} is not in the catalogue (item ids are 0 … {num_items - 1})."
                )


def _is_list(x: object) -> bool:
    """A sized, iterable collection (list, tuple, numpy array...), not text."""
    return hasattr(x, "__len__") and hasattr(x, "__iter__") and not isinstance(x, str | bytes | Mapping)


def recommend(
    rec: Recommender,
    histories: Sequence[Sequence[int]],
    k: int,
    *,
    method: str = "tree",
    batch_size: int = 16,
    draft_beams: int | None = None,
    gamma: int = 3,
    seed: int = 0,
    max_history: int = MAX_HISTORY,
    progress: bool = False,
    engine: str = "auto",
) -> Recommendations:
    """The top-`k` items for each history (0-based item ids, oldest first; the last `max_history` are used).

    Users are decoded `batch_size` at a time (left-padded). Speculative methods need `rec.draft`
    and use N = max(K, `draft_beams`) draft beams (default 2K; the draft must propose at least K) and
    `gamma` drafted levels per round. The sampling methods are seeded with `seed`, and their K draws
    are returned best score first.
    `engine` ("auto", "static", "dynamic"; see atspeed.hf.engine) picks the tree and speculative
    methods' decoding path: "static" lets every user of a batch accept on its own, as decoded alone.
    """
    check_method(method, has_draft=rec.draft is not None)
    check_k(k, rec.num_items, rec.num_ids)
    for name, value in (("batch_size", batch_size), ("max_history", max_history), ("gamma", gamma)):
        check_int(name, value)
    if draft_beams is not None:
        check_int("draft_beams", draft_beams, note=" (or None for 2K)")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    check_histories(histories, rec.num_items)
    histories = [recent([int(i) for i in h], max_history) for h in histories]
    out = Recommendations(items=[], scores=torch.empty(0, k))
    scores = []
    calls = _CallCounter(rec.target)
    if method in SAMPLING:
        torch.manual_seed(seed)
    with calls, torch.inference_mode():
        for batch in tqdm(_batches(histories, batch_size), total=-(-len(histories) // batch_size),
                          desc=method, unit="batch", disable=not progress, leave=False):
            calls.count = 0
            with Timer(rec.target.device) as timer:
                decoded = _decode(rec, batch, k, method, draft_beams or 2 * k, gamma, engine)
            items, batch_scores = _ranked_items(rec, decoded, len(batch), k, method)
            out.items += items
            scores.append(batch_scores)
            stats = {key: decoded.stats[key] for key in ("n_run", "total_accept_steps") if key in decoded.stats}
            out.seconds += timer.time_cost
            out.target_calls += calls.count * len(batch)
            rounds, accepted = _user_counts(decoded.stats, len(batch))
            out.rounds += rounds
            out.accepted_levels += accepted
            out.per_batch.append({"users": len(batch), "seconds": timer.time_cost, "target_calls": calls.count,
                                  **stats})
    out.scores = torch.cat(scores) if scores else out.scores
    out.target_calls /= max(1, len(histories))
    return out


def _user_counts(stats: dict, users: int) -> tuple[int, int]:
    """Rounds and accepted levels summed over a batch's users, so that their ratio is the acceptance a
    user sees whatever the batch size: the engine's users advance on their own (per-user counters),
    a lockstep batch's users share every round and its accepted levels."""
    if "rounds_per_request" in stats:
        return sum(stats["rounds_per_request"]), sum(stats["accepted_per_request"])
    return stats.get("n_run", 0) * users, stats.get("total_accept_steps", 0) * users


def _batches(histories: Sequence[tuple[int, ...]], size: int) -> Iterator[Sequence[tuple[int, ...]]]:
    for i in range(0, len(histories), size):
        yield histories[i : i + size]


def _decode(
    rec: Recommender, histories: Sequence[Sequence[int]], k: int, method: str, draft_beams: int, gamma: int,
    engine: str = "auto",
) -> TreeBeamOutput:
    """One batch through the method's own entry point: [B*k, prompt_len + L] sequences, [B*k] scores
    and the core's counters (speculative: n_run rounds, total_accept_steps)."""
    device = rec.target.device
    # on a GPU, a few prompt lengths serve all traffic: the engine captures one graph per shape
    bucket = PROMPT_BUCKET if device.type == "cuda" else 1
    input_ids, attention_mask = encode_prompts(rec.vocab, histories, bucket=bucket)
    processor = TrieLogitsProcessor(rec.trie, input_ids.shape[1], eos_token_id=rec.vocab.eos_token_id)
    settings = dict(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        logits_processor=LogitsProcessorList([processor]),
        max_new_tokens=rec.vocab.id_length,
        num_beams=k,
        num_return_sequences=k,
        do_sample=method in SAMPLING,
        pad_token_id=rec.vocab.pad_token_id,
        eos_token_id=rec.vocab.eos_token_id,
        return_dict_in_generate=True,
        output_scores=True,
    )
    if method in ("hf", "hf-sample"):
        return _hf_generate(rec.target, **settings)
    if method == "tree":
        return generate_with_tree_attention(rec.target, always_beam=True, step_scores=False, engine=engine, **settings)
    return generate_speculative(rec.target, rec.draft, draft_beams=max(k, draft_beams), schedule=DraftSchedule(gamma),
                                engine=engine, **settings)


def _hf_generate(model: PreTrainedModel, **settings: object) -> TreeBeamOutput:
    """HF's own generate(), in the core's result type. K = 1 runs greedy search or plain sampling,
    which keep no sequence score: the same score is computed from the raw logits."""
    one = settings["num_beams"] == 1
    out = model.generate(**settings, output_logits=one)
    return TreeBeamOutput(sequences=out.sequences, sequences_scores=_logit_scores(out) if one else out.sequences_scores,
                          stats={})


def _logit_scores(out) -> torch.Tensor:
    """Beam search's score of a 1-beam output: the chosen tokens' log-probabilities (before the
    logits processors, as beam search takes them), summed and divided by the generated length."""
    logits = torch.stack(out.logits, 1).float()  # [B, L, V]
    chosen = out.sequences[:, -logits.shape[1] :]  # [B, L]
    log_probs = logits.log_softmax(-1).gather(-1, chosen[..., None])[..., 0]
    return log_probs.sum(-1) / logits.shape[1]


def _ranked_items(
    rec: Recommender, decoded: TreeBeamOutput, users: int, k: int, method: str
) -> tuple[list[list[int]], torch.Tensor]:
    """Each user's K items and [users, K] scores, best first (beam search returns them so; a
    sampler's draws are sorted here, stably)."""
    seqs = decoded.sequences
    items = decode_items(rec.vocab, seqs[:, seqs.shape[1] - rec.vocab.id_length :].cpu())
    if None in items:  # the trie makes this impossible; never hand out a wrong item silently
        raise RuntimeError(f"Decoding produced an invalid item for method {method!r}.")
    scores = decoded.sequences_scores.view(users, k).float().cpu()  # [users, K]
    order = torch.arange(k).expand(users, k)
    if method in SAMPLING:
        scores, order = scores.sort(dim=1, descending=True, stable=True)
    return [[items[u * k + j] for j in row] for u, row in enumerate(order.tolist())], scores


class _CallCounter:
    """Counts forward calls of a model (all methods the same way, HF's generate included)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.count, self._handle = model, 0, None

    def _hook(self, *_: object) -> None:
        self.count += 1

    def __enter__(self) -> _CallCounter:
        self._handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.remove()

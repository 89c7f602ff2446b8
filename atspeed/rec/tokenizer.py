"""A Hugging Face tokenizer for semantic-ID vocabularies, and item <-> token-id helpers.

One token per semantic-ID code (`<a_47>`, `<b_103>`, ...) plus four special tokens:

    id 0 <pad>   left padding (decoder-only generation)
    id 1 <s>     BOS: starts every prompt (added by the tokenizer's post-processor)
    id 2 </s>    EOS: ends a target item in training; the only token allowed after a full item
    id 3 <unk>   anything that is not a known code

A prompt is `<s>` followed by the history's semantic IDs, oldest first, with no separator: every ID
has exactly L tokens and the level prefixes (a, b, c, d) mark the boundaries, so a separator would
only lengthen prompts. The model answers with the next item's L tokens.
Text form: codes written back to back (`"<a_1><b_2><c_3><d_4>"`) or separated by whitespace.

The tokenizer is a plain `PreTrainedTokenizerFast` (WordLevel model), so `save_pretrained` /
`AutoTokenizer.from_pretrained` work with transformers 4.57 and 5.x and need no custom code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3

_CODE = re.compile(r"<([^<>_]*)_(\d+)>")


def build_tokenizer(index: Mapping[int, Sequence[str]]) -> PreTrainedTokenizerFast:
    """Tokenizer whose vocabulary is the special tokens plus every code used in `index`.

    Codes are numbered level by level, then by code number, so ids do not depend on item order.
    """
    level: dict[str, int] = {}  # token -> first position it appears at
    for sid in index.values():
        for j, tok in enumerate(sid):
            level[tok] = min(j, level.get(tok, j))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for tok in sorted(level, key=lambda t: (level[t], *_code_order(t))):
        if tok in vocab:
            raise ValueError(f"Semantic-ID token {tok!r} collides with a special token.")
        vocab[tok] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # split on whitespace, then cut "<a_1><b_2>" into "<a_1>", "<b_2>" (text outside <> becomes <unk>)
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"<[^<>]*>"), behavior="isolated")]
    )
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    core.decoder = decoders.Fuse()  # decode back to "<a_1><b_2>..."
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: causal LMs reject them
    )


def _code_order(tok: str) -> tuple[int, int, str]:
    """Sort key: <b_7> before <b_10>; tokens not of the form <prefix_number> after them, by name."""
    m = _CODE.fullmatch(tok)
    return (0, int(m.group(2)), m.group(1)) if m else (1, 0, tok)


def history_text(index: Mapping[int, Sequence[str]], items: Sequence[int]) -> str:
    """The text form of a history: its items' codes back to back (no BOS; the tokenizer adds it)."""
    return "".join(tok for i in items for tok in index[i])


@dataclass(frozen=True)
class ItemVocab:
    """Items as token ids, and the way back; the bridge between item ids and generate()."""

    tokens: torch.Tensor  # [I, L] int64: row i = token ids of item i's semantic ID
    lookup: dict[tuple[int, ...], int]  # token ids -> item (the lowest item id if shared)
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    @property
    def id_length(self) -> int:
        return self.tokens.shape[1]


def item_vocab(tokenizer: PreTrainedTokenizerFast, index: Mapping[int, Sequence[str]]) -> ItemVocab:
    """Token ids of every item in `index` (keys 0 … I-1) under `tokenizer`."""
    vocab = tokenizer.get_vocab()
    missing = sorted({t for sid in index.values() for t in sid if t not in vocab})
    if missing:
        raise ValueError(f"{len(missing)} semantic-ID tokens are not in the tokenizer, e.g. {missing[:5]}.")
    rows = [[vocab[t] for t in index[i]] for i in range(len(index))]
    lookup: dict[tuple[int, ...], int] = {}
    for item, row in enumerate(rows):
        lookup.setdefault(tuple(row), item)
    return ItemVocab(
        tokens=torch.tensor(rows, dtype=torch.int64),
        lookup=lookup,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode_history(vocab: ItemVocab, items: Sequence[int]) -> list[int]:
    """Prompt token ids for one history: BOS, then each item's L tokens, oldest first."""
    body = vocab.tokens[list(items)].flatten().tolist() if len(items) else []
    return [vocab.bos_token_id, *body]


def encode_prompts(
    vocab: ItemVocab, histories: Sequence[Sequence[int]], bucket: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded batch for generate(): input_ids and attention_mask, both [B, n]. `bucket` > 1
    pads n up to a multiple of it, so that a few prompt shapes serve all traffic (the static
    engine captures one CUDA graph per shape)."""
    rows = [encode_history(vocab, h) for h in histories]
    n = -(-max(len(r) for r in rows) // bucket) * bucket
    input_ids = torch.full((len(rows), n), vocab.pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), n), dtype=torch.int64)
    for b, r in enumerate(rows):
        input_ids[b, n - len(r) :] = torch.tensor(r)
        attention_mask[b, n - len(r) :] = 1
    return input_ids, attention_mask


def decode_items(vocab: ItemVocab, generated: torch.Tensor | Sequence[Sequence[int]]) -> list[int | None]:
    """Item id of each generated row's first L tokens ([N, >= L], prompt removed); None if invalid."""
    rows = generated.tolist() if isinstance(generated, torch.Tensor) else generated
    L = vocab.id_length
    return [vocab.lookup.get(tuple(r[:L])) if len(r) >= L else None for r in rows]

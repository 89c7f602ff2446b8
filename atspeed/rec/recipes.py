"""Model recipes for generative recommendation: a small Llama target and a ~12x smaller draft.

Why Llama: it is the architecture of the AtSpeed paper's models, and every decoder in atspeed is
tested against it. Sizes are small enough to train on a CPU on the synthetic data or Beauty:

    kind     hidden  layers  heads  MLP    params (vocab ~300)
    target   256     4       4      1024   ~4.4 M
    draft    96      2       4      384    ~0.35 M   (target / draft ~ 12)
    tiny     32      1       2      64     for tests

Vocabulary size and special-token ids come from the tokenizer, so a model always matches the
tokenizer it is trained with. transformers is imported when a model is made, so the command line
can list the recipes without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atspeed.rec.data import MAX_HISTORY

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

ID_LENGTH = 4  # tokens per semantic ID
# BOS + MAX_HISTORY items + the answer + EOS, rounded up with room to spare
MAX_POSITIONS = 128
assert 1 + MAX_HISTORY * ID_LENGTH + ID_LENGTH + 1 <= MAX_POSITIONS

SIZES: dict[str, dict[str, int]] = {
    "target": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "draft": {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 384},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}


def model_config(kind: str, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The LlamaConfig of recipe `kind` ("target", "draft" or "tiny") for `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig

    if kind not in SIZES:
        raise ValueError(f"Unknown model kind {kind!r}; choose one of {sorted(SIZES)}.")
    size = SIZES[kind]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=size["num_attention_heads"],  # plain multi-head attention
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **size,
    )


def new_model(kind: str, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised model of recipe `kind` (seed torch first for reproducible weights)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(model_config(kind, tokenizer))

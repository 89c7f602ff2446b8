"""Shared test utilities: tiny seeded models, prompt builders and a tie-aware beam comparison.

Everything runs in float64 (``model.double()``): HF casts the last-token logits to float32 before
``log_softmax``, so with float64 models the tree-attention forward and HF's per-beam forward give
bit-identical float32 log-probs in practice, and the two beam searches must agree exactly.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gpt2")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

PAD = 0  # pad token id of every tiny model
BOS = 1
# Token ids >= FIRST_FREE_TOKEN are never special: prompts are drawn from them.
FIRST_FREE_TOKEN = 3

# Scores at or below this are HF's "impossible" scores (-1e9 added, or -inf from a processor):
# their order among themselves is a tie-break, so only the score is compared, not the sequence.
IMPOSSIBLE = -1.0e8


def make_model(
    arch: str = "llama",
    seed: int = 0,
    *,
    vocab_size: int = 64,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = 256,
    initializer_range: float = 0.3,
    attn_implementation: str = "sdpa",
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = PAD,
    **config_overrides: Any,
) -> torch.nn.Module:
    """A tiny randomly initialised causal LM in float64, eval mode, deterministic in `seed`.

    `initializer_range` is large (0.3) so that next-token distributions are peaked enough for
    beams to diverge and for EOS tokens to be chosen at varied steps.
    """
    common = dict(
        vocab_size=vocab_size,
        bos_token_id=BOS,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        initializer_range=initializer_range,
    )
    if arch == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
            n_inner=2 * hidden_size,
            **common,
        )
        cls = GPT2LMHeadModel
    else:
        llama_like = dict(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_positions,
            **common,
        )
        if arch == "llama":
            config, cls = LlamaConfig(**llama_like), LlamaForCausalLM
        elif arch == "qwen2":
            config, cls = Qwen2Config(**llama_like), Qwen2ForCausalLM
        elif arch == "qwen3":
            config, cls = Qwen3Config(head_dim=hidden_size // num_heads, **llama_like), Qwen3ForCausalLM
        elif arch == "mistral":
            # Mistral's default 4096-token sliding window is far beyond any test length.
            config, cls = MistralConfig(**llama_like), MistralForCausalLM
        else:
            raise ValueError(f"unknown architecture {arch!r}")
    for key, value in config_overrides.items():
        setattr(config, key, value)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = cls(config).double().eval()
    # Deterministic generation defaults: nothing inherited from a hub config.
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = BOS
    model.generation_config.do_sample = False
    return model


def fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An independent instance with the same weights (patching one never touches the other)."""
    return copy.deepcopy(model)


def random_prompts(
    lengths: Sequence[int], vocab_size: int = 64, seed: int = 0, low: int = FIRST_FREE_TOKEN
) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab_size, (n,), generator=g).tolist() for n in lengths]


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int = PAD) -> dict[str, torch.Tensor]:
    """Batch of prompts, left-padded, with the matching attention_mask (1 = real token)."""
    n = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), n), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            input_ids[i, n - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[i, n - len(p) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def batch(lengths: Sequence[int], vocab_size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    return left_pad(random_prompts(lengths, vocab_size, seed))


def hf_generate(model: torch.nn.Module, **kwargs: Any):
    """The oracle: the class's own generate(), whatever is patched on the instance."""
    return type(model).generate(model, **kwargs)


def tree_generate(model: torch.nn.Module, engine: str = "auto", **kwargs: Any):
    """atspeed's drop-in patch, applied to an independent copy of `model`; with `engine` other than
    "auto", the same generate() path forced onto that engine ("static" or "dynamic")."""
    from atspeed.beamsd_replace import replace_beam_search_with_TreeAttn
    from atspeed.hf.generate import generate_with_tree_attention

    if engine != "auto":
        return generate_with_tree_attention(fresh_copy(model), engine=engine, **kwargs)
    return replace_beam_search_with_TreeAttn(fresh_copy(model)).generate(**kwargs)


def frequent_tokens(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], k: int, count: int = 1) -> list[int]:
    """Token ids that HF's beam search (no EOS) generates often: good EOS candidates that will end
    hypotheses at various steps. Deterministic in the model and inputs."""
    out = hf_generate(
        model, **inputs, max_new_tokens=8, num_beams=k, num_return_sequences=k, eos_token_id=None
    )
    generated = out[:, inputs["input_ids"].shape[1] :].flatten()
    generated = generated[generated >= FIRST_FREE_TOKEN]
    counts = torch.bincount(generated, minlength=model.config.vocab_size)
    order = torch.sort(counts, descending=True, stable=True).indices
    return order[:count].tolist()


def ending_tokens(
    model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], k: int, count: int = 1, max_new_tokens: int = 12,
    candidates: int = 16,
) -> list[int]:
    """EOS ids that really end some of the hypotheses HF returns (num_return_sequences=k): each,
    used alone as EOS, leaves at least one returned hypothesis ending with it. Deterministic."""
    found: list[int] = []
    n = inputs["input_ids"].shape[1]
    for token in frequent_tokens(model, inputs, k, candidates):
        out = hf_generate(
            model, **inputs, max_new_tokens=max_new_tokens, num_beams=k, num_return_sequences=k, eos_token_id=token
        )
        if (out[:, n:] == token).any():
            found.append(token)
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} tokens end HF's beams for this model/prompt: pick another seed")


# --------------------------------------------------------------------------------------------
# Tie-aware comparison
# --------------------------------------------------------------------------------------------


@dataclass
class Beams:
    sequences: torch.Tensor  # [N, L]
    scores: torch.Tensor | None  # [N]
    beam_indices: torch.Tensor | None  # [N, G]


def as_beams(x: Any) -> Beams:
    """Normalise a generate() tensor / GenerateBeamDecoderOnlyOutput / beam_search_by_TreeAttn dict."""
    if isinstance(x, torch.Tensor):
        return Beams(x, None, None)
    if isinstance(x, Beams):
        return x
    if isinstance(x, dict) and "beam_sequences" in x:
        return Beams(x["beam_sequences"], x["beam_scores"], None)
    return Beams(x.sequences, getattr(x, "sequences_scores", None), getattr(x, "beam_indices", None))


def _row(t: torch.Tensor | None, i: int) -> tuple:
    return () if t is None else tuple(t[i].tolist())


def assert_same_beams(ref: Any, out: Any, rows_per_request: int | None = None) -> None:
    """`out` must be HF's result `ref`, up to the order of hypotheses with exactly equal scores.

    - shapes, dtypes and the score vector must be identical (scores are sorted, so ties do not move them);
    - within a request, a run of equal scores may be permuted: the multisets of (sequence,
      beam_indices) rows must match;
    - hypotheses with an impossible score (<= -1e8, i.e. HF's -1e9 or -inf) are compared by score only;
    - without scores (plain tensor output), sequences must be identical.
    No tolerance is ever applied to scores.
    """
    ref, out = as_beams(ref), as_beams(out)
    assert out.sequences.shape == ref.sequences.shape, (
        f"sequences shape {tuple(out.sequences.shape)} != HF {tuple(ref.sequences.shape)}\n"
        f"HF:\n{ref.sequences}\natspeed:\n{out.sequences}"
    )
    assert out.sequences.dtype == ref.sequences.dtype
    if ref.scores is None or out.scores is None:
        assert ref.scores is None and out.scores is None, "one side has sequences_scores, the other not"
        assert torch.equal(out.sequences, ref.sequences), f"HF:\n{ref.sequences}\natspeed:\n{out.sequences}"
        if ref.beam_indices is not None or out.beam_indices is not None:
            assert torch.equal(out.beam_indices, ref.beam_indices)
        return
    assert out.scores.dtype == ref.scores.dtype
    assert torch.equal(out.scores, ref.scores), (
        f"sequences_scores differ:\nHF      {ref.scores.tolist()}\natspeed {out.scores.tolist()}\n"
        f"HF:\n{ref.sequences}\natspeed:\n{out.sequences}"
    )
    if ref.beam_indices is None or out.beam_indices is None:  # e.g. the function API's dict
        ref = Beams(ref.sequences, ref.scores, None)
        out = Beams(out.sequences, out.scores, None)
    else:
        assert out.beam_indices.shape == ref.beam_indices.shape, (
            f"beam_indices shape {tuple(out.beam_indices.shape)} != HF {tuple(ref.beam_indices.shape)}"
        )
    N = ref.sequences.shape[0]
    R = rows_per_request or N
    assert N % R == 0
    scores = ref.scores.tolist()
    for start in range(0, N, R):
        i = start
        while i < start + R:
            j = i + 1
            while j < start + R and scores[j] == scores[i]:
                j += 1
            if scores[i] > IMPOSSIBLE:
                ref_rows = sorted((_row(ref.sequences, r), _row(ref.beam_indices, r)) for r in range(i, j))
                out_rows = sorted((_row(out.sequences, r), _row(out.beam_indices, r)) for r in range(i, j))
                assert out_rows == ref_rows, (
                    f"hypotheses {i}..{j - 1} (score {scores[i]}) differ from HF's\n"
                    f"HF:      {ref_rows}\natspeed: {out_rows}"
                )
            i = j


def assert_same_step_tensors(ref: Sequence[torch.Tensor] | None, out: Sequence[torch.Tensor] | None, name: str) -> None:
    """Per-step `scores` / `logits` tuples: same number of steps, bit-identical tensors."""
    assert (ref is None) == (out is None), f"{name}: HF gives {type(ref)}, atspeed {type(out)}"
    if ref is None:
        return
    assert len(out) == len(ref), f"{name}: {len(out)} steps, HF has {len(ref)}"
    for step, (a, b) in enumerate(zip(ref, out)):
        assert b.shape == a.shape and b.dtype == a.dtype, (
            f"{name}[{step}]: {b.shape}/{b.dtype} vs HF {a.shape}/{a.dtype}"
        )
        assert torch.equal(a, b), f"{name}[{step}] differs from HF (max abs diff {(a - b).abs().nan_to_num().max()})"


def assert_same_generate_output(ref: Any, out: Any, rows_per_request: int | None = None) -> None:
    """Full dict-output equality: beams (tie-aware) plus per-step scores and logits."""
    assert isinstance(out, type(ref)), f"{type(out).__name__} is not a {type(ref).__name__} (HF's output type)"
    assert (getattr(out, "beam_indices", None) is None) == (getattr(ref, "beam_indices", None) is None)
    assert (getattr(out, "sequences_scores", None) is None) == (getattr(ref, "sequences_scores", None) is None)
    assert_same_beams(ref, out, rows_per_request)
    assert_same_step_tensors(getattr(ref, "scores", None), getattr(out, "scores", None), "scores")
    assert_same_step_tensors(getattr(ref, "logits", None), getattr(out, "logits", None), "logits")


def per_request(out: Any, b: int, rows_per_request: int, prompt_len: int, beams_per_request: int) -> Beams:
    """Request `b` of a batched result: generated tokens only, beam indices made batch-relative."""
    beams = as_beams(out)
    rows = slice(b * rows_per_request, (b + 1) * rows_per_request)
    indices = None
    if beams.beam_indices is not None:
        indices = beams.beam_indices[rows].clone()
        live = indices >= 0
        indices[live] -= b * beams_per_request
    scores = None if beams.scores is None else beams.scores[rows]
    return Beams(beams.sequences[rows, prompt_len:], scores, indices)


def pad_generated(beams: Beams, length: int, fill_value: int) -> Beams:
    """Right-pad generated tokens (and beam indices with -1) to `length` steps, as a longer batch would."""
    seq = beams.sequences
    if seq.shape[1] < length:
        seq = torch.cat((seq, seq.new_full((seq.shape[0], length - seq.shape[1]), fill_value)), dim=1)
    idx = beams.beam_indices
    if idx is not None and idx.shape[1] < length:
        idx = torch.cat((idx, idx.new_full((idx.shape[0], length - idx.shape[1]), -1)), dim=1)
    return Beams(seq, beams.scores, idx)


def hf_fill_value(pad_token_id: int | None, eos_token_id: int | list[int] | None) -> int:
    """What HF writes after a finished hypothesis: `pad or eos[0] if eos is not None else -1`
    (Python precedence included: pad_token_id=0 is falsy, so EOS is used then)."""
    if eos_token_id is None:
        return -1
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return pad_token_id or eos[0]


class ForwardRecorder:
    """Records the batch shape of every model forward call (a forward pre-hook).

    HF's beam search runs the model on B * K rows; tree attention runs it on B rows (one shared
    sequence per request). This tells, from the outside, which implementation ran."""

    def __init__(self, model: torch.nn.Module):
        self.shapes: list[tuple[int, ...]] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.shapes.append(tuple(ids.shape))

    @property
    def batch_sizes(self) -> set[int]:
        return {s[0] for s in self.shapes}

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "ForwardRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def examples(n: int) -> int:
    """hypothesis max_examples: `n` in CI, 10x under HYPOTHESIS_PROFILE=soak."""
    import os

    return n * 10 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else n


TRANSFORMERS_MAJOR = int(__import__("transformers").__version__.split(".")[0])


@contextmanager
def benchmark_script(name: str) -> Iterator[ModuleType]:
    """benchmarks/<name>.py imported as a module (registered while in use: dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)

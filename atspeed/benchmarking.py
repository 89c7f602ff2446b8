"""The benchmarks' library: side-by-side timing, the engine table (`atspeed bench engine`) and the
README example timed (`atspeed bench decode`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from atspeed.timing import Timer


def compare(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, object]]:
    """Median wall time in ms (CUDA-synchronised) and the last output of each method. Each runs once
    to warm up; then the repeats are interleaved, so drifts in machine load hit every method alike."""
    outputs = {name: fn() for name, fn in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            with Timer() as t:
                outputs[name] = fn()
            times[name].append(1e3 * t.time_cost)
    return {name: (statistics.median(times[name]), outputs[name]) for name in methods}


# -- the hardware's limits, measured in the same run ------------------------------------------------


@dataclass(frozen=True)
class Peak:
    flops: float  # dense matmul FLOP/s in the model's dtype
    bytes_per_s: float  # memory copy bandwidth (read + write)


def measure_peak(device: torch.device | str, dtype: torch.dtype) -> Peak:
    """Best of a few large matmuls and copies: the roofline the decode is compared with."""
    n = 4096 if torch.device(device).type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    flops = 2 * n**3 / _best_seconds(lambda: a @ a)
    src = torch.empty(
        64 * 2**20 if torch.device(device).type == "cpu" else 1024 * 2**20, dtype=torch.uint8, device=device
    )
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / _best_seconds(lambda: dst.copy_(src))
    return Peak(flops, bandwidth)


def _best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        with Timer() as t:
            fn()
        best = min(best, t.time_cost)
    return best


def decode_roofline_s(model: torch.nn.Module, peak: Peak, batch: int, prompt: int, beams: int, new: int) -> float:
    """Lower bound on one tree-attention decode of `batch` requests: every forward reads all weights
    once (prefill + new - 1 levels), and does 2 FLOPs per weight per token (prompt once, K tokens a
    level; the LM head only where logits are needed); the larger of the two bounds. Attention FLOPs
    are left out (small at these lengths)."""
    weights = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()  # only where logits are needed
    tokens = batch * (prompt + (new - 1) * beams)
    logit_rows = batch * (1 + (new - 1) * beams)
    memory_s = new * weight_bytes / peak.bytes_per_s
    compute_s = 2 * ((weights - embed - head) * tokens + head * logit_rows) / peak.flops
    return max(memory_s, compute_s)


# -- the engine benchmark ---------------------------------------------------------------------------

HF_APART_ROWS = 512  # above this many beam rows (B * K) HF is timed apart from the others, once
ENGINE_METHODS = ("hf", "hf-static", "tree", "engine-hf", "engine", "engine+sd", "engine+sd-noisy")
# "engine-hf": the engine on HF's model forward instead of the lean one (atspeed.hf.lean);
# "engine-eager": the static engine without CUDA graph capture (on a CPU it is what "engine" runs)
ALL_ENGINE_METHODS = ("hf", "hf-static", "tree", "engine-hf", "engine", "engine+sd", "engine+sd-noisy", "engine-eager")


@dataclass
class EngineCell:
    batch: int
    beams: int
    ms: dict[str, float]  # per request, median of the repeats; missing: not run (see notes)
    differ: list[str]  # methods whose sequences differ from HF's (from the engine's where HF did not run)
    roofline_ms: float
    notes: list[str]


def engine_cell(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    noisy_draft: torch.nn.Module,
    peak: Peak,
    *,
    batch: int,
    beams: int,
    prompt: int = 84,
    new: int = 4,
    draft_beams: int = 40,
    gamma: int = 3,
    repeats: int = 3,
    methods: tuple[str, ...] = ENGINE_METHODS,
    hf_max_rows: int = 4096,
) -> EngineCell:
    """Time every method on the same `batch` random prompts (no padding) at K = `beams`."""
    from atspeed.beamsd import beam_search_by_SD
    from atspeed.hf.generate import generate_with_tree_attention
    from atspeed.hf.lean import hf_forward

    def hf_forward_run(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        with hf_forward():
            return fn()

    device = next(target.parameters()).device
    g = torch.Generator().manual_seed(batch * 1000 + beams)
    ids = torch.randint(3, target.config.vocab_size, (batch, prompt), generator=g).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    common = dict(max_new_tokens=new, num_beams=beams, num_return_sequences=beams, pad_token_id=0, eos_token_id=None)
    notes: list[str] = []

    def sd(d: torch.nn.Module) -> Callable[[], torch.Tensor]:
        return lambda: beam_search_by_SD(
            target, d, inputs, new, gamma, beams, max(beams, draft_beams), eos_token_id=None, pad_token_id=0
        )["beam_sequences"]

    runs: dict[str, Callable[[], torch.Tensor]] = {
        "hf": lambda: target.generate(**inputs, **common),
        "hf-static": lambda: target.generate(**inputs, **common, cache_implementation="static"),
        "tree": lambda: generate_with_tree_attention(target, always_beam=True, engine="dynamic", **inputs, **common),
        "engine": lambda: generate_with_tree_attention(target, always_beam=True, **inputs, **common),
        "engine-hf": lambda: hf_forward_run(
            lambda: generate_with_tree_attention(target, always_beam=True, **inputs, **common)
        ),
        "engine-eager": lambda: generate_with_tree_attention(
            target, always_beam=True, engine="static", **inputs, **common
        ),
        "engine+sd": sd(draft),
        "engine+sd-noisy": sd(noisy_draft),
    }
    runs = {name: fn for name, fn in runs.items() if name in methods}
    if batch * beams > hf_max_rows:
        for name in ("hf", "hf-static"):
            if runs.pop(name, None) is not None:
                notes.append(f"{name} not run: {batch * beams} beam rows > --hf-max-rows {hf_max_rows}")
    outputs: dict[str, torch.Tensor] = {}
    ms: dict[str, float] = {}
    with torch.inference_mode():
        # HF at many beam rows is slow and may run out of memory: timed apart, once, OOM reported.
        # Elsewhere it is interleaved with the others, so that a drift in machine speed hits all alike.
        apart = [n for n in ("hf", "hf-static") if n in runs] if batch * beams > HF_APART_ROWS else []
        for name in apart:
            try:
                ((t, out),) = compare({name: runs.pop(name)}, 1).values()
                ms[name], outputs[name] = t / batch, out
            except torch.OutOfMemoryError:
                notes.append(f"{name}: out of memory")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        for name, (t, out) in compare(runs, repeats).items():
            ms[name], outputs[name] = t / batch, out
    # every method is exact: all must return HF's lists (the engine's, or the first method's, without HF)
    reference = outputs.get("hf", outputs.get("engine", next(iter(outputs.values()))))
    differ = [name for name, out in outputs.items() if not torch.equal(out, reference)]
    roofline = 1e3 * decode_roofline_s(target, peak, batch, prompt, beams, new) / batch
    return EngineCell(batch, beams, ms, differ, roofline, notes)


def format_engine_table(cells: list[EngineCell], methods: tuple[str, ...] = ENGINE_METHODS) -> str:
    """ms per request of each method, users/s and speedup of the engine over HF, and the engine's
    distance to the roofline."""
    head = f"{'B':>3} {'K':>4} " + " ".join(f"{m:>15}" for m in methods)
    head += f" {'engine users/s':>14} {'engine x HF':>11} {'roofline ms':>11} {'engine/roof':>11}  differ"
    lines = [head]
    for c in cells:
        row = f"{c.batch:>3} {c.beams:>4} " + " ".join(
            f"{c.ms[m]:>15.2f}" if m in c.ms else f"{'-':>15}" for m in methods
        )
        engine = c.ms.get("engine")
        users = f"{1e3 / engine:>14.1f}" if engine else f"{'-':>14}"
        gain = f"{c.ms['hf'] / engine:>10.2f}x" if engine and "hf" in c.ms else f"{'-':>11}"
        roof = f"{engine / c.roofline_ms:>10.1f}x" if engine else f"{'-':>11}"
        row += f" {users} {gain} {c.roofline_ms:>11.3f} {roof}  {','.join(c.differ) or 'none'}"
        lines.append(row)
        lines += [f"         note: {n}" for n in c.notes]
    return "\n".join(lines)


def engine_benchmark(
    size: str = "cpu",
    device: str = "cpu",
    dtype: str = "float32",
    batches: Sequence[int] = (1, 16),
    beams: Sequence[int] = (1, 20, 128, 256),
    methods: tuple[str, ...] = ENGINE_METHODS,
    *,
    repeats: int = 3,
    hf_max_rows: int = 4096,
    noise: float = 0.02,
    time_budget_s: float | None = None,
    print_fn: Callable[[str], None] = print,
) -> list[EngineCell]:
    """The engine table on `atspeed.models.draft_target_pair(size)` (its target, an always-right draft
    and one with `noise`), rec shape: 84-token prompt, 4 new tokens. Prints rows as they finish;
    cells left when `time_budget_s` is spent are skipped, and said so."""
    from atspeed.models import draft_target_pair

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch has no CUDA device (torch.cuda.is_available() is False).")
    torch_dtype = getattr(torch, dtype)
    target, draft = draft_target_pair(size, 0.0, device=device, dtype=torch_dtype)
    _, noisy = draft_target_pair(size, noise, device=device, dtype=torch_dtype)
    peak = measure_peak(device, torch_dtype)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    params = sum(p.numel() for p in target.parameters()) / 1e6
    print_fn(
        f"torch {torch.__version__}; {name}; {size} target ({params:.0f}M params), {dtype}; prompt 84, 4 new tokens"
    )
    print_fn(f"measured peak: {peak.flops / 1e9:.0f} GFLOP/s matmul, {peak.bytes_per_s / 1e9:.0f} GB/s copy")
    cells: list[EngineCell] = []
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    for batch in batches:
        for k in beams:
            if deadline is not None and time.monotonic() > deadline:
                print_fn(f"B={batch} K={k}: not run (time budget of {time_budget_s:.0f} s spent)")
                continue
            cells.append(
                engine_cell(
                    target,
                    draft,
                    noisy,
                    peak,
                    batch=batch,
                    beams=k,
                    repeats=repeats,
                    methods=methods,
                    hf_max_rows=hf_max_rows,
                )
            )
            print_fn("\n".join(format_engine_table(cells[-1:], methods).splitlines()[1:]))
    print_fn("")
    print_fn(format_engine_table(cells, methods))
    return cells


# -- `atspeed bench decode`: the README's example, timed ----------------------------------------------

HF_LABEL = "HF generate(num_beams=K)"


def decode_benchmark(
    beams: int = 20, draft_beams: int = 40, gamma: int = 3, new_tokens: int = 4, prompt_len: int = 84, repeats: int = 5
) -> str:
    """The comparison as `atspeed bench decode` prints it: a line on the setting, the table (ms, speedup
    over HF, same top-K as HF), and the speculative run's rounds, accepted levels and target calls."""
    from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
    from atspeed.models import draft_target_pair

    torch.manual_seed(0)
    target, draft = draft_target_pair("cpu", noise=0.0)
    prompt = torch.randint(3, target.config.vocab_size, (1, prompt_len))
    inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
    runs = {
        HF_LABEL: lambda: (
            target.generate(
                **inputs,
                max_new_tokens=new_tokens,
                num_beams=beams,
                num_return_sequences=beams,
                return_dict_in_generate=True,
                output_scores=True,
            ).sequences
        ),
        "tree attention": lambda: beam_search_by_TreeAttn(target, inputs, max_new_tokens=new_tokens, beam_size=beams),
        "speculative (strict)": lambda: beam_search_by_SD(
            target,
            draft,
            inputs,
            max_new_tokens=new_tokens,
            gamma=gamma,
            beam_size=beams,
            draft_beam_size=max(beams, draft_beams),
        ),
    }
    with torch.inference_mode():
        results = compare(runs, repeats)
    hf_ms, reference = results[HF_LABEL]
    lines = [
        f"target: random Llama {target.config.num_hidden_layers}x{target.config.hidden_size}; draft: its first "
        f"layer (always agrees). prompt {prompt_len} tokens, K={beams}, {new_tokens} new tokens",
        "",
        f"{'method':<26} {'ms':>8} {'speedup':>8}  same top-{beams} as HF",
    ]
    for name, (ms, out) in results.items():
        sequences = out if name == HF_LABEL else out["beam_sequences"]
        same = torch.equal(sequences[:, prompt_len:], reference[:, prompt_len:])
        lines.append(f"{name:<26} {ms:>8.1f} {hf_ms / ms:>7.2f}x  {'yes' if same else 'NO'}")
    sd = results["speculative (strict)"][1]
    lines += [
        "",
        f"speculative: {sd['n_run']} round(s), {sd['ave_accept_steps']:.2f} accepted levels per round, "
        f"{sd['target_calls']} target forward call(s)",
    ]
    return "\n".join(lines)

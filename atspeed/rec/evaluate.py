"""Quality and speed together: every decoding method at every K on the same test users.

For each K, each method returns its top-K lists; the row reports Recall@K / NDCG@K, wall time per
user, target forwards per user, the speedup over its baseline, and how many users got a list
different from HF's. A method's baseline is the target's own decoding of the same kind: HF beam
search for the beam-search methods, HF beam sampling (`hf-sample`) for relaxed speculative decoding,
which is a sampler: set beside beam search it would look broken (a sampler's recall is lower).
Exact methods (tree, strict speculative) must show 0 mismatches; samplers draw their lists (seeded:
a rerun draws the same), which no exact list need equal, so their mismatch count is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from atspeed.rec.data import EvalCase
from atspeed.rec.metrics import evaluate
from atspeed.rec.recommend import METHODS, SAMPLING, SPECULATIVE, Recommender, check_k, merge, recommend

EXACT = ("tree", "speculative")  # must reproduce the reference lists


def baseline(method: str) -> str:
    """The target's own decoding that `method` is timed against: HF beam sampling for the samplers,
    HF beam search for the rest."""
    return "hf-sample" if method in SAMPLING else "hf"


@dataclass(frozen=True)
class MethodResult:
    k: int
    method: str
    users: int
    recall: float  # Recall@k
    ndcg: float  # NDCG@k
    ms_per_user: float
    speedup_vs_hf: float | None  # over `baseline` (HF's beam search or beam sampling); None when it was not run
    target_calls_per_user: float
    accepted_levels_per_round: float | None  # speculative methods only
    mismatches: int | None  # users whose list differs from the reference's; None if not comparable
    baseline: str | None = None  # the HF method this row's speedup is measured against (None: not run)

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_decoding(
    rec: Recommender,
    cases: Sequence[EvalCase],
    ks: Sequence[int] = (5, 10, 20),
    methods: Sequence[str] | None = None,
    *,
    batch_size: int = 1,
    draft_beams: int | None = None,
    gamma: int = 3,
    seed: int = 0,
    warmup: int = 2,
    progress: bool = True,
) -> list[MethodResult]:
    """Run every method at every K on `cases`; rows ordered by K, then by `methods`.

    `methods` defaults to every method the recommender can run (speculative ones need a draft), and
    `hf-sample` with `speculative-relaxed`, as its baseline. The reference lists are HF's when "hf" is
    run, else tree attention's. `warmup` users are
    decoded once, untimed, before each method, so one-off costs do not land on the first method;
    then the methods take turns on each slice of `batch_size` users, so that changes in machine load
    during the run hit every method alike (the speedups are ratios measured side by side).
    """
    if not cases:
        raise ValueError("No test users to evaluate.")
    if methods is None:
        methods = default_methods(has_draft=rec.draft is not None)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    for k in ks:  # every K before the first run, not after the runs of the K before it
        check_k(k, rec.num_items, rec.num_ids)
    histories = [c.history for c in cases]
    truths = [c.truth for c in cases]
    reference = "hf" if "hf" in methods else "tree" if "tree" in methods else None
    rows: list[MethodResult] = []
    slices = range(0, len(histories), batch_size)
    bar = tqdm(total=len(ks) * len(slices), desc="evaluate", unit="batch", disable=not progress)
    for k in ks:
        bar.set_postfix_str(f"K={k}")
        settings = {"batch_size": batch_size, "draft_beams": draft_beams, "gamma": gamma}
        for method in methods:
            if warmup:
                recommend(rec, histories[:warmup], k, method=method, seed=seed, **settings)
        parts: dict[str, list] = {m: [] for m in methods}
        for i, start in enumerate(slices):  # methods take turns on each slice: load drifts hit all alike
            for method in methods:
                chunk = histories[start : start + batch_size]
                parts[method].append(recommend(rec, chunk, k, method=method, seed=seed + i, **settings))
            bar.update()
        runs = {m: merge(p) for m, p in parts.items()}
        for method, out in runs.items():
            quality = evaluate(out.items, truths, ks=[k])
            ms = 1e3 * out.seconds / len(cases)
            base = baseline(method) if baseline(method) in runs else None
            comparable = reference is not None and (method in EXACT or method == reference)
            rows.append(MethodResult(
                k=k,
                method=method,
                users=len(cases),
                recall=quality[f"recall@{k}"],
                ndcg=quality[f"ndcg@{k}"],
                ms_per_user=ms,
                speedup_vs_hf=runs[base].seconds / out.seconds if base is not None else None,
                target_calls_per_user=out.target_calls,
                accepted_levels_per_round=out.accepted_levels / out.rounds if out.rounds else None,
                mismatches=_mismatches(out.items, runs[reference].items) if comparable else None,
                baseline=base,
            ))
    bar.close()
    return rows


def default_methods(*, has_draft: bool) -> list[str]:
    """Every method that applies: the speculative ones need a draft, and HF beam sampling is run as
    the relaxed method's baseline."""
    skip = set(SPECULATIVE) | {"hf-sample"} if not has_draft else set()
    return [m for m in METHODS if m not in skip]


def _mismatches(lists: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> int:
    return sum(list(a) != list(b) for a, b in zip(lists, reference, strict=True))

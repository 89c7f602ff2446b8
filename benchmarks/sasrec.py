"""SASRec (Kang & McAuley, ICDM 2018) on our split, scored by our metric code: the sequential baseline.

    python benchmarks/sasrec.py [--data DIR] [--out benchmarks/results/beauty_sasrec.json] [--threads 1]

Benchmark only: nothing in `atspeed` imports it. The generative models' table compares against it on
the same users, the same histories (`eval_cases`: the last 20 items) and the same
`atspeed.rec.metrics.evaluate`, so its numbers sit in the same table as theirs.

Why not RecBole: the issue asks for a well-kept implementation if it works with our stack. RecBole
1.2.1 (the newest release) installed with torch 2.13 CPU in a separate venv, but does not run there:
- `recbole.quick_start` imports ray 2.6.3, which imports `pkg_resources`: ModuleNotFoundError with
  setuptools >= 81;
- `recbole.config.Config()` fails at once under numpy 2: its `compatibility_settings` does
  `np.float = np.float_`, and numpy 2 removed `np.float_` (AttributeError);
- with those aliases shimmed by hand, `create_dataset` fails in `Dataset._remap` under pandas 3:
  "ValueError: Length of values (1) does not match length of index" when it remaps the
  `item_id_list` field of the pre-split (benchmark) files.
Pinning numpy < 2 and pandas < 3 for it would no longer be our stack, so this file holds a compact
SASRec in plain PyTorch instead:
- item embeddings (shared with the output layer) plus learned positional embeddings, dropout;
- pre-LayerNorm blocks of causal multi-head self-attention and a point-wise feed-forward layer
  (hidden -> hidden -> hidden, ReLU), residual connections and dropout, a final LayerNorm;
- left padding, so the newest item is always at the last position; a position never attends to
  padding (or to later positions);
- the training objective is full softmax cross-entropy over all items at every position of a
  user's train sequence (each position predicts the next train item: `train_windows`), Adam;
- early stopping on NDCG@10 of the validation users (`eval_cases(ds, "valid")`: history = train).

Paper settings on Beauty: hidden 64, 2 blocks, dropout 0.5, lr 1e-3; here 2 heads (the issue's
setting; the paper used 1) and at most 20 items of history (the paper: 50), the generative models'
context. Training also stops after `max_minutes` (12) so a 1-thread CPU run ends in about 15
minutes; the JSON says which rule stopped it.
Recommendations are not masked: like our beam search, SASRec may recommend an item of the user's
history. The table and the JSON also give the figures with history items excluded, the usual
convention of papers; on Beauty no test item is in its user's history, so that can only help.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atspeed.rec.baselines import popularity_lists
from atspeed.rec.data import (
    MAX_HISTORY,
    RecDataset,
    eval_cases,
    load_dataset,
    splits_sha256,
    train_windows,
    with_valid_in_train,
)
from atspeed.rec.metrics import evaluate

REPO = Path(__file__).resolve().parents[1]
BEAUTY = REPO / "../shared/data/beauty"
KS = (5, 10, 20)


@dataclass(frozen=True)
class Settings:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = MAX_HISTORY  # history items read; the same last-20 histories as the generative models
    dropout: float = 0.5  # the paper's value on Beauty (sparse data)
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    max_minutes: float = 12.0  # stop training after this long even if still improving (keeps CPU runs short)
    seed: int = 0


@dataclass
class Result:
    rankings: list[list[int]]  # top-k item ids (0-based) per test case, best first
    test: dict[str, float]  # Recall / NDCG @ 5, 10, 20 on the test cases, history items allowed
    test_exclude_history: dict[str, float]  # the same with each user's history items removed
    best_valid_ndcg10: float
    best_epoch: int
    epochs: int
    stopped: str  # "patience", "max_epochs" or "time"
    train_seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: loss, valid NDCG@10, seconds


class Block(nn.Module):
    """One SASRec block: x + Dropout(Attention(LN(x))), then x + Dropout(FFN(LN(x)))."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln_attn = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ln_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        q = self.ln_attn(x)
        mask = blocked.repeat_interleave(self.heads, dim=0)  # [B * heads, L, L], True = may not attend
        a, _ = self.attn(q, q, q, attn_mask=mask, need_weights=False)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class SASRec(nn.Module):
    """Item sequence [B, L] (1-based ids, 0 = padding on the left) -> hidden states [B, L, H]."""

    def __init__(self, num_items: int, s: Settings) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items + 1, s.hidden, padding_idx=0)
        self.positions = nn.Embedding(s.max_len, s.hidden)
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(Block(s.hidden, s.heads, s.dropout) for _ in range(s.layers))
        self.ln = nn.LayerNorm(s.hidden)
        for emb in (self.items, self.positions):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        L = seq.shape[1]
        pad = seq == 0  # [B, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).triu(1)  # [L, L]: later positions
        # A position attends to itself even when it is padding, so no row is fully masked (NaN).
        blocked = causal | (pad[:, None, :] & ~torch.eye(L, dtype=torch.bool, device=seq.device))  # [B, L, L]
        x = self.items(seq) * math.sqrt(self.items.embedding_dim) + self.positions.weight[None, -L:]
        x = self.drop(x) * ~pad[..., None]
        for block in self.blocks:
            x = block(x, blocked)
        return self.ln(x)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] -> logits [..., num_items + 1] (column 0, padding, is never an item)."""
        return h @ self.items.weight.T


def left_pad(seqs: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """0-based item sequences -> [B, length] 1-based ids, the newest item last, zeros before."""
    out = torch.zeros(len(seqs), length, dtype=torch.long)
    for row, seq in enumerate(seqs):
        tail = list(seq)[-length:]
        if tail:
            out[row, length - len(tail) :] = torch.tensor(tail) + 1
    return out


@torch.no_grad()
def top_k(
    model: SASRec,
    histories: Sequence[Sequence[int]],
    k: int,
    max_len: int,
    *,
    exclude_history: bool = False,
    batch_size: int = 512,
) -> list[list[int]]:
    """The k highest-scoring items (0-based) after each history, by the full-catalogue softmax."""
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        seq = left_pad(chunk, max_len)
        logits = model.scores(model(seq)[:, -1])  # [B, N + 1]
        logits[:, 0] = -math.inf
        if exclude_history:
            logits.scatter_(1, seq, -math.inf)  # seq's zeros only hit the padding column again
        out.extend((logits.topk(k, dim=1).indices - 1).tolist())
    return out


def train_epoch(model: SASRec, opt: torch.optim.Optimizer, seqs: torch.Tensor, batch_size: int) -> float:
    """One pass over the train windows in random order; mean cross-entropy per predicted item."""
    model.train()
    total, count = 0.0, 0
    for idx in torch.randperm(len(seqs)).split(batch_size):
        batch = seqs[idx]  # [B, L + 1]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        keep = (inputs != 0) & (targets != 0)  # [B, L]: positions that predict a real next item
        h = model(inputs)[keep]  # [P, H]
        loss = F.cross_entropy(h @ model.items.weight[1:].T, targets[keep] - 1)  # [P, N]: padding is no class
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(h)
        count += len(h)
    return total / max(count, 1)


def train_and_evaluate(
    ds: RecDataset, s: Settings = Settings(), k: int = 20, log: Callable[[str], None] = print,
    include_valid: bool = False,
) -> Result:
    """Train on the train split with early stopping on validation NDCG@10, then rank for every test user.
    With `include_valid`, the final fit: train + valid items, no validation, the last epoch is kept."""
    if k < max(KS):
        raise ValueError(f"k must be >= {max(KS)} to report the metrics at {KS}, got {k}.")
    torch.manual_seed(s.seed)
    windows = train_windows(with_valid_in_train(ds) if include_valid else ds, s.max_len)
    if not windows:
        raise ValueError(f"Dataset {ds.name!r}: no user has two train items, so there is nothing to train on.")
    seqs = left_pad([w.items for w in windows], s.max_len + 1)  # inputs are [:, :-1], targets [:, 1:]
    valid = [] if include_valid else eval_cases(ds, "valid", s.max_len)
    test = eval_cases(ds, "test", s.max_len)
    model = SASRec(ds.num_items, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, betas=(0.9, 0.98))
    best, best_epoch, best_state, stopped, history = -1.0, 0, None, "max_epochs", []
    t0 = time.perf_counter()
    for epoch in range(1, s.max_epochs + 1):
        e0 = time.perf_counter()
        loss = train_epoch(model, opt, seqs, s.batch_size)
        ndcg10 = None  # the final fit has no validation: every epoch replaces the one before
        if valid:
            ranked = top_k(model, [c.history for c in valid], 10, s.max_len)
            ndcg10 = evaluate(ranked, [c.truth for c in valid], ks=(10,))["ndcg@10"]
        history.append({"epoch": epoch, "loss": loss, "valid_ndcg@10": ndcg10, "seconds": time.perf_counter() - e0})
        score = "" if ndcg10 is None else f"  valid NDCG@10 {ndcg10:.4f}"
        log(f"epoch {epoch:3d}  loss {loss:.4f}{score}  ({history[-1]['seconds']:.1f}s)")
        if ndcg10 is None or ndcg10 > best:
            best, best_epoch = (best if ndcg10 is None else ndcg10), epoch
            best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
        elif epoch - best_epoch >= s.patience:
            stopped = "patience"
            break
        if time.perf_counter() - t0 > s.max_minutes * 60:
            stopped = "time"
            break
    train_seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    histories, truths = [c.history for c in test], [c.truth for c in test]
    rankings = top_k(model, histories, k, s.max_len)
    excluded = top_k(model, histories, k, s.max_len, exclude_history=True)
    return Result(
        rankings=rankings,
        test=evaluate(rankings, truths, KS),
        test_exclude_history=evaluate(excluded, truths, KS),
        best_valid_ndcg10=best,
        best_epoch=best_epoch,
        epochs=len(history),
        stopped=stopped,
        train_seconds=train_seconds,
        history=history,
    )


def table(rows: dict[str, dict[str, float]]) -> str:
    """Metric rows as a fixed-width table: one line per row, Recall and NDCG at each K."""
    cols = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]
    width = max(len(name) for name in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{c:>9}" for c in cols)]
    lines += [f"{name:{width}}  " + "  ".join(f"{r[c]:9.4f}" for c in cols) for name, r in rows.items()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=BEAUTY, help="dataset folder (default: Beauty)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/beauty_sasrec.json")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=Settings.max_minutes, help="training time limit")
    p.add_argument("--max-epochs", type=int, default=Settings.max_epochs)
    p.add_argument("--seed", type=int, default=Settings.seed)
    p.add_argument("--include-valid", action="store_true",
                   help="the final fit: train on train + valid items for --max-epochs epochs, no validation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = Settings(max_minutes=args.max_minutes, max_epochs=args.max_epochs, seed=args.seed)
    ds = load_dataset(args.data, allow_duplicate_ids=True)
    r = train_and_evaluate(ds, s, include_valid=args.include_valid)
    users = len(r.rankings)
    print(
        f"\nSASRec on {ds.name}: {users} test users, best epoch {r.best_epoch} of {r.epochs} ({r.stopped}), "
        + ("final fit on train + valid, " if args.include_valid else f"valid NDCG@10 {r.best_valid_ndcg10:.4f}, ")
        + f"trained in {r.train_seconds:.0f}s"
    )
    test = eval_cases(ds, "test", s.max_len)
    popular = evaluate(popularity_lists(ds, test, max(KS)), [c.truth for c in test], KS)  # the floor to beat
    rows = {"popularity (train+valid)": popular, "SASRec": r.test, "SASRec, history excluded": r.test_exclude_history}
    print(table(rows))
    report = {
        "meta": {
            "dataset": ds.name,
            "splits_sha256": splits_sha256(ds),  # bench_quality matches this run to a reindexed copy by it
            "split": "test",
            "users": users,
            "torch": torch.__version__,
            "threads": args.threads,
            "machine": platform.processor() or platform.machine(),
        },
        "settings": asdict(s),
        "include_valid": args.include_valid,
        "test": r.test,
        "test_exclude_history": r.test_exclude_history,
        "popularity": popular,
        "best_valid_ndcg@10": None if args.include_valid else r.best_valid_ndcg10,
        "best_epoch": r.best_epoch,
        "epochs": r.epochs,
        "stopped": r.stopped,
        "train_seconds": r.train_seconds,
        "history": r.history,
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]) + f" ({args.threads} thread)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

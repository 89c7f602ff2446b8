"""The evaluation table in the terminal, as JSON and CSV, and as a PNG plot.

Each row's speedup is over its `baseline`, the target's own decoding of the same kind: HF beam
search (`hf`) for the beam-search methods, HF beam sampling (`hf-sample`) for relaxed speculative
decoding, which samples (its recall is a sampler's; compare it with `hf-sample`, not with `hf`).

Files are written next to each other under one folder, each atomically (atspeed.files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import pandas as pd

from atspeed.files import write_text, write_with
from atspeed.rec.evaluate import MethodResult

COLUMNS = {
    "k": "K",
    "method": "method",
    "baseline": "baseline",
    "recall": "Recall@K",
    "ndcg": "NDCG@K",
    "ms_per_user": "ms/user",
    "speedup_vs_hf": "speedup vs HF",
    "target_calls_per_user": "target calls/user",
    "accepted_levels_per_round": "accepted levels/round",
    "mismatches": "lists != HF",
}


def results_frame(rows: Sequence[MethodResult]) -> pd.DataFrame:
    return pd.DataFrame([r.as_dict() for r in rows])


def format_table(rows: Sequence[MethodResult]) -> str:
    """A fixed-width table for the terminal ('-' where a value does not apply)."""
    frame = results_frame(rows)[list(COLUMNS)].rename(columns=COLUMNS)
    frame["baseline"] = frame["baseline"].fillna("-")
    formats = {
        "Recall@K": "{:.4f}", "NDCG@K": "{:.4f}", "ms/user": "{:.1f}", "speedup vs HF": "{:.2f}x",
        "target calls/user": "{:.2f}", "accepted levels/round": "{:.2f}", "lists != HF": "{:.0f}",
    }
    for col, fmt in formats.items():
        frame[col] = [fmt.format(v) if v is not None and not pd.isna(v) else "-" for v in frame[col]]
    return frame.to_string(index=False)


def plot(rows: Sequence[MethodResult], path: str | os.PathLike, title: str = "") -> Path:
    """Two panels against K: speedup over HF beam search, and Recall@K (one line per method)."""
    frame = results_frame(rows)
    fig, (ax_speed, ax_recall) = plt.subplots(1, 2, figsize=(10, 4))
    for method, part in frame.groupby("method", sort=False):
        if part["speedup_vs_hf"].notna().any():
            ax_speed.plot(part["k"], part["speedup_vs_hf"], marker="o", label=method)
        ax_recall.plot(part["k"], part["recall"], marker="o", label=method)
    ax_speed.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax_speed.set(xlabel="K (beams = items returned)",
                 ylabel="speedup vs HF (beam search; beam sampling for samplers)")
    ax_recall.set(xlabel="K", ylabel="Recall@K")
    for ax in (ax_speed, ax_recall):
        ax.set_xticks(sorted(frame["k"].unique()))
        if ax.get_legend_handles_labels()[0]:  # without HF no method has a speedup to show
            ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def write_report(rows: Sequence[MethodResult], out_dir: str | os.PathLike, meta: dict | None = None,
                 title: str = "") -> dict[str, Path]:
    """results.json (rows + `meta`), results.csv and results.png in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "png": out_dir / "results.png"}
    payload = {"meta": meta or {}, "results": [r.as_dict() for r in rows]}
    write_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    write_with(paths["csv"], lambda tmp: results_frame(rows).to_csv(tmp, index=False))
    plot(rows, paths["png"], title)
    return paths

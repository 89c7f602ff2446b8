"""Alignment over seeds: mean and spread of bench_align.py's figures across runs that differ only in --seed.

    python benchmarks/align_seeds.py runs/align/seed0/align_beauty-cf.json runs/align/seed1/align_beauty-cf.json \\
        runs/align/seed2/align_beauty-cf.json --out benchmarks/results/align_beauty-cf_seeds

For each verification (strict, relaxed), K and draft: accepted levels per round, target calls per
user and speedup over HF beam search, as mean ± sample standard deviation over the seeds; then, for
each verification and K, the leading method and whether its lead over the runner-up exceeds their
spreads (the lead counts only when mean difference > the larger of the two standard deviations).
The untouched starting draft is the same in every seed: its spread is timing noise only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from atspeed.files import write_text

METRICS = (("accepted_levels_per_round", "levels/round", ".3f"), ("target_calls_per_user", "target calls", ".2f"),
           ("speedup_vs_hf", "speedup vs HF", ".2f"))


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


COUNTED = ("accepted_levels_per_round", "target_calls_per_user")  # from all users when a run counted them


def collect(runs: list[dict]) -> dict[tuple[str, int, str], dict[str, list[float]]]:
    """(verification, K, draft) -> metric -> one value per run (speculative rows only). A run that
    timed a subset of its users and counted all of them (rows_all) gives its counts from all users."""
    out: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    for run in runs:
        counted = {(r["verification"], r["k"], r["draft"]): r for r in run.get("rows_all") or []}
        for row in run["rows"]:
            if row["verification"] not in ("strict", "relaxed"):
                continue
            key = (row["verification"], row["k"], row["draft"])
            cell = out.setdefault(key, {m: [] for m, _, _ in METRICS})
            for metric, _, _ in METRICS:
                cell[metric].append(counted.get(key, row)[metric] if metric in COUNTED else row[metric])
    return out


def users_line(run: dict) -> str:
    timed = run["rows"][0]["users"]
    counted = run["rows_all"][0]["users"] if run.get("rows_all") else timed
    if counted == timed:
        return f"Every figure from the first {timed} test users."
    return (f"Accepted levels and target calls counted on the first {counted} test users; speedups timed on "
            f"the first {timed}.")


def leader(cells: dict[str, dict[str, list[float]]]) -> str:
    """The method with the most accepted levels per round, and whether it leads beyond the spread."""
    ranked = sorted(((mean_sd(c["accepted_levels_per_round"]), d) for d, c in cells.items() if d != "start"),
                    reverse=True)
    (m1, s1), first = ranked[0]
    (m2, s2), second = ranked[1]
    clear = m1 - m2 > max(s1, s2)
    return f"{first} ({m1:.3f}) over {second} ({m2:.3f}): " + ("beyond the spread" if clear else "within the spread")


def validation_lines(trainings: list[dict], seeds: list[int]) -> list[str]:
    """The validation acceptance at each method's last check, one column per seed, with its mean ± sd and
    the mean at step 0. trainings[i]: method -> training record (with 'history') of seeds[i]."""
    lines = ["## Validation acceptance during training (strict, last check, mean ± sd)", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for method in trainings[0]:
        last = [t[method]["history"][-1]["acceptance"] for t in trainings]
        start = [t[method]["history"][0]["acceptance"] for t in trainings]
        m, s = mean_sd(last)
        lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" for v in last) + f" | {m:.3f} ± {s:.3f} "
                     f"(start {statistics.fmean(start):.3f}) |")
    return lines


PER_RUN = ("seed", "out", "results_dir", "threads")  # settings that may differ between the runs


def check_same_settings(runs: list[dict], paths: list[Path]) -> None:
    """Refuse runs that differ in anything but the seed (and where they wrote): their spread would mix causes."""
    base = {k: v for k, v in runs[0]["settings"].items() if k not in PER_RUN}
    for run, path in zip(runs[1:], paths[1:], strict=True):
        other = {k: v for k, v in run["settings"].items() if k not in PER_RUN}
        diff = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
        if diff:
            raise SystemExit(f"{path} differs from {paths[0]} in {', '.join(diff)}, not only the seed.")


def report(runs: list[dict], paths: list[Path]) -> str:
    seeds = [r["settings"]["seed"] for r in runs]
    cells = collect(runs)
    ks = sorted({k for _, k, _ in cells})
    drafts = list(dict.fromkeys(d for _, _, d in cells))
    first = runs[0]
    lines = [f"# Draft alignment on {first['dataset']} over seeds {', '.join(map(str, seeds))}", "",
             f"`python benchmarks/align_seeds.py {' '.join(map(str, paths))}`", "",
             f"Each run: `{first['command']}` (with its own --seed and --out).", "",
             f"Mean ± standard deviation over the seeds. {users_line(first)}", ""]
    for verification in ("strict", "relaxed"):
        for metric, title, fmt in METRICS:
            lines += [f"## {verification}: {title}", "",
                      "| draft | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
            for d in drafts:
                vals = [mean_sd(cells[(verification, k, d)][metric]) if (verification, k, d) in cells else None
                        for k in ks]
                lines.append(f"| {d} | " + " | ".join("-" if v is None else f"{v[0]:{fmt}} ± {v[1]:{fmt}}"
                                                        for v in vals) + " |")
            lines.append("")
        lines += [f"## {verification}: leading method by K", ""]
        for k in ks:
            at_k = {d: cells[(verification, k, d)] for d in drafts if (verification, k, d) in cells}
            lines.append(f"- K={k}: {leader(at_k)}")
        lines.append("")
    lines += validation_lines([r["training"] for r in runs], seeds)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="bench_align.py JSON files, one per seed")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md (and print)")
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    check_same_settings(runs, args.runs)
    text = report(runs, args.runs)
    print(text)
    if args.out is not None:
        write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()

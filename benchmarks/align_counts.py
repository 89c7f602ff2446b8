"""Accepted levels per round over seeds, read from the count tables that `bench_align.py --count-progress`
prints, with the validation acceptance tracked during training over every trained seed.

    python benchmarks/align_counts.py results/align_beauty-cf_full/seed0-counts.md \\
        results/align_beauty-cf_full/seed1-counts.md \\
        --training results/align_beauty-cf_full/seed{0,1,2}-training.json --out results/align_beauty-cf_full/seeds

align_seeds.py summarises complete runs (counted and timed); this script covers seeds whose counts exist
without a timed run, or only in part: a run not counted in some seed is shown with the seeds it has and
left out of the leading-method test, which compares only drafts counted in every seed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from atspeed.files import write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, also when imported by the tests

from align_seeds import leader, mean_sd, validation_lines  # noqa: E402

LEVELS = "accepted_levels_per_round"


def read_counts(path: Path) -> tuple[int, dict[tuple[str, int, str], float]]:
    """(seed, {(verification, K, draft): accepted levels per round}) from a --count-progress table."""
    text = path.read_text()
    seed = re.search(r"--seed (\d+)", text)
    if seed is None:
        raise SystemExit(f"{path}: no '--seed N' in its command line")
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("| draft | strict K=")), None)
    if head is None:
        raise SystemExit(f"{path}: no accepted-levels table ('| draft | strict K=...')")
    cols = [tuple(c.split(" K=")) for c in lines[head].strip("|").split("|")[1:]]
    values: dict[tuple[str, int, str], float] = {}
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        draft, *cells = (c.strip() for c in line.strip("|").split("|"))
        for (verification, k), cell in zip(cols, cells, strict=True):
            if cell not in ("—", "-"):
                values[(verification.strip(), int(k), draft)] = float(cell)
    return int(seed.group(1)), values


def report(counts: list[tuple[int, dict]], training: list[dict], paths: list[Path],
           training_paths: list[Path]) -> str:
    seeds = [s for s, _ in counts]
    keys = list(dict.fromkeys(key for _, values in counts for key in values))
    ks = sorted({k for _, k, _ in keys})
    drafts = list(dict.fromkeys(d for _, _, d in keys))
    lines = [f"# Draft alignment over seeds {', '.join(map(str, seeds))}: accepted levels per round", "",
             f"`python benchmarks/align_counts.py {' '.join(map(str, paths))} --training "
             f"{' '.join(map(str, training_paths))}`", "",
             "Counted on every test user of each count table; mean ± sample standard deviation over the seeds "
             "that counted the run (a cell marked (n) has only n seeds).", ""]
    for verification in ("strict", "relaxed"):
        lines += [f"## {verification}", "", "| draft | " + " | ".join(f"K={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for d in drafts:
            cells = []
            for k in ks:
                vals = [values[(verification, k, d)] for _, values in counts if (verification, k, d) in values]
                m, s = mean_sd(vals) if vals else (None, None)
                cells.append("-" if m is None else f"{m:.3f} ± {s:.3f}" + ("" if len(vals) == len(counts)
                                                                           else f" ({len(vals)})"))
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines += ["", f"Leading method by K ({verification}; drafts counted in every seed):", ""]
        for k in ks:
            complete = {d: {LEVELS: [values[(verification, k, d)] for _, values in counts]} for d in drafts
                        if all((verification, k, d) in values for _, values in counts)}
            left_out = [d for d in drafts if d not in complete]
            lead = leader(complete) if len(set(complete) - {"start"}) > 1 else "fewer than two drafts to compare"
            lines.append(f"- K={k}: {lead}" + (f" (not counted in every seed: {', '.join(left_out)})"
                                               if left_out else ""))
        lines.append("")
    if training:
        trainings = [t["methods"] for t in training]
        lines += validation_lines(trainings, [next(iter(t.values()))["config"]["seed"] for t in trainings]) + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("counts", type=Path, nargs="+", help="bench_align.py --count-progress outputs, one per seed")
    ap.add_argument("--training", type=Path, nargs="*", default=[],
                    help="training records (JSON: 'methods' -> method -> its 'history' and 'config' with the seed)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md (and print)")
    args = ap.parse_args()
    missing = [str(p) for p in (*args.counts, *args.training) if not p.is_file()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    counts = [read_counts(p) for p in args.counts]
    if len({s for s, _ in counts}) != len(counts):
        raise SystemExit("two count tables come from the same seed")
    text = report(counts, [json.loads(p.read_text()) for p in args.training], args.counts, args.training)
    print(text)
    if args.out is not None:
        write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()

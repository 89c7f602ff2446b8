"""The trie benchmark's library code: both processors timed on the same rows for each batch size,
one table, the dataset given explicitly (package code holds no path to a local data folder)."""

from __future__ import annotations

import re
from pathlib import Path

import atspeed
from atspeed.rec.bench_trie import catalogue, run, trie_step_costs


def test_each_batch_size_times_both_processors_on_b_times_k_rows(synthetic):
    costs = trie_step_costs(synthetic.index, batches=(1, 2), beams=3, repeats=1)
    assert [(c.batch, c.rows) for c in costs] == [(1, 3), (2, 6)]
    assert all(c.vectorised_ms > 0 and c.hf_ms > 0 for c in costs)


def test_a_dataset_folder_gives_its_own_catalogue(synthetic, synthetic_dir):
    name, index = catalogue(synthetic_dir)
    assert name == synthetic.name and index == synthetic.index


def test_run_prints_the_catalogue_then_one_row_per_batch_size():
    lines = run(batches=(1, 2), beams=2, repeats=1, threads=None).splitlines()
    assert lines[0].startswith("catalogue: synthetic, 512 items")
    assert [line.split()[:2] for line in lines[2:]] == [["1", "2"], ["2", "4"]]


def test_package_code_builds_no_path_into_a_local_data_folder():
    package = Path(atspeed.__file__).parent
    # `root / "../shared/..."`, `Path("../shared...")`
    path_into_shared = re.compile(r"""(/|Path\()\s*["']\.\./shared""")
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py") if path_into_shared.search(p.read_text())]
    assert offenders == []

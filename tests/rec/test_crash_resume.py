"""Crashes (SIGKILL: no handler, `finally` or atexit runs) leave nothing that a rerun trips on.

Training: a run killed while a checkpoint's files are written, or between checkpoints, is resumed
by the next `atspeed train` from the last complete checkpoint, and ends with the weights of a run
that was never stopped. Batch outputs: a job killed while writing or renaming its files leaves
either the old output or no output (never a mix), and the next run removes its temporaries.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from atspeed.rec.recommend import PRETRAINED
from atspeed.rec.synthetic import SyntheticConfig, write_synthetic
from atspeed.rec.train import COMPLETE
from cli_process import atspeed

KILLED = -9  # the exit status multiprocessing reports for SIGKILL
TRAIN = ("--kind", "tiny", "--max-steps", "6", "--batch-size", "8", "--save-steps", "2")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash") / "data"
    write_synthetic(root, SyntheticConfig(num_items=128, num_users=60))
    return root


def checkpoints(out):
    return {p.name: (p / COMPLETE).exists() for p in sorted(out.glob("checkpoint-*"))}


def test_training_killed_at_any_point_resumes_from_the_last_complete_checkpoint(small_data, tmp_path):
    ref = atspeed("train", small_data, "ref", *TRAIN, cwd=tmp_path)
    assert ref.exit_code == 0, ref.output

    killed = atspeed("train", small_data, "run", *TRAIN, cwd=tmp_path, kill=("checkpoint-weights", 4))
    run = tmp_path / "run"
    assert killed.exit_code == KILLED
    assert checkpoints(run) == {"checkpoint-2": True, "checkpoint-4": False}  # weights written, state not
    assert not (run / "checkpoint-4" / "trainer_state.json").exists() and not (run / "final").exists()

    killed = atspeed("train", small_data, "run", *TRAIN, cwd=tmp_path, kill=("step", 5))
    assert killed.exit_code == KILLED
    assert "resuming from run/checkpoint-2" in killed.stdout
    assert "removing run/checkpoint-4: a run was stopped while saving it" in killed.stderr
    assert checkpoints(run) == {"checkpoint-2": True, "checkpoint-4": True}

    done = atspeed("train", small_data, "run", *TRAIN, cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert "resuming from run/checkpoint-4" in done.stdout
    ours, reference = (load_file(d / "final" / "model.safetensors") for d in (run, tmp_path / "ref"))
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[name], reference[name]) for name in ours)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-batch") / "data"
    write_synthetic(root)  # the catalogue of the committed demo models
    return root


def batch_job(data_dir, tmp_path, *extra, kill=None):
    return atspeed("recommend", "--data", data_dir, "--target", PRETRAINED / "synthetic-target", "--input",
                   "users.jsonl", "--output", "lists.parquet", "-k", "3", *extra, cwd=tmp_path, kill=kill)


OUTPUTS = ["lists.errors.parquet", "lists.parquet", "users.jsonl"]


UNFINISHED = ["lists.errors.parquet", "users.jsonl"]  # no lists.parquet: no result (it is written last)


@pytest.mark.parametrize(("kill", "old_output", "after_crash"), [
    (("writing", 2), False, ["users.jsonl"]),  # errors temporary written, lists temporary half written
    (("writing", 2), True, OUTPUTS),  # the same over an old output, which stays whole
    (("rename", 1), True, UNFINISHED),  # both temporaries written, old lists removed, nothing renamed
    (("rename", 2), True, UNFINISHED),  # the errors file renamed, the lists file not
], ids=["while-writing", "while-writing-over-old", "before-renaming", "between-renames"])
def test_a_batch_job_killed_while_writing_leaves_no_mix_and_no_temporaries(data_dir, tmp_path, kill, old_output,
                                                                           after_crash):
    (tmp_path / "users.jsonl").write_text("".join(f'{{"user": {u}, "history": [{u + 3}, 17]}}\n' for u in range(5))
                                          + '{"user": "bad", "history": []}\n')
    if old_output:
        assert batch_job(data_dir, tmp_path, "-k", "2").exit_code == 0
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    assert batch_job(data_dir, tmp_path, "--overwrite", kill=kill).exit_code == KILLED
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == after_crash
    if (tmp_path / "lists.parquet").exists():
        assert {name: (tmp_path / name).read_bytes() for name in OUTPUTS} == old  # the old output, whole
    assert any(p.name.startswith(".lists") for p in tmp_path.iterdir())  # the killed run's temporaries

    if after_crash == UNFINISHED:
        refused = batch_job(data_dir, tmp_path)
        assert refused.exit_code == 2 and "left by a run that did not finish" in refused.stderr
    done = batch_job(data_dir, tmp_path, "--overwrite")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == OUTPUTS  # no temporaries left
    lists = pd.read_parquet(tmp_path / "lists.parquet")
    assert lists["user"].tolist() == [str(u) for u in range(5)] and all(len(i) == 3 for i in lists["items"])


def test_only_the_temporaries_of_writers_that_are_gone_are_removed(tmp_path):
    from atspeed.files import _temp_prefix, remove_stale_temps, write_text

    target = tmp_path / "out.txt"
    mine = tmp_path / f"{_temp_prefix(target)}abc.tmp"  # this process is running: its temporary stays
    gone = tmp_path / mine.name.replace(f"-{os.getpid()}-", f"-{2**22 + 1}-")  # above Linux's pid_max: no process
    other = tmp_path / ".out.txt.tmp-otherhost-1-abc.tmp"  # another machine's writer: unknown, stays
    for path in (mine, gone, other):
        path.write_text("partial")
    assert remove_stale_temps(target) == [gone]
    write_text(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name, "out.txt"])

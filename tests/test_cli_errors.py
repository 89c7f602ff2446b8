"""Every user error through the `atspeed` command ends the same way: exit status 2, exactly one line
`Error: ...` that names the problem and the file or option, no traceback, and nothing written.

The table holds the bad inputs, broken files and missing pieces a new user hits: options out of
range, model folders and datasets with a missing, corrupt or truncated file, logs that cannot be
read, batch inputs and outputs that cannot be used, and Ray not installed. Each case runs in an
empty working folder, and every output it names lies in that folder, which must stay empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from atspeed.rec.recommend import PRETRAINED
from atspeed.rec.synthetic import write_synthetic
from cli_process import atspeed

TARGET, DRAFT = PRETRAINED / "synthetic-target", PRETRAINED / "synthetic-draft"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def broken_model(root: Path, name: str, file: str, content: bytes | None) -> Path:
    """The committed target with `file` replaced by `content` (None: removed); the rest linked."""
    folder = root / name
    folder.mkdir()
    for original in TARGET.iterdir():
        if original.name != file:
            (folder / original.name).symlink_to(original)
    if content is not None:
        (folder / file).write_bytes(content)
    return folder


def broken_data(root: Path, name: str, data: Path, file: str, edit) -> Path:
    folder = root / name
    shutil.copytree(data, folder)
    path = folder / file
    path.write_text(edit(path.read_text()))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    write_synthetic(data)
    weights = (TARGET / "model.safetensors").read_bytes()
    index = "synthetic.index.json"
    paths = {
        "data": data,
        "target": TARGET,
        "draft": DRAFT,
        "no-config": broken_model(root, "no-config", "config.json", None),
        "bad-config": broken_model(root, "bad-config", "config.json", b"{not json"),
        "no-weights": broken_model(root, "no-weights", "model.safetensors", None),
        "garbage-weights": broken_model(root, "garbage-weights", "model.safetensors", b"\x00" * 64),
        "half-weights": broken_model(root, "half-weights", "model.safetensors", weights[: len(weights) // 2]),
        "no-tokenizer": broken_model(root, "no-tokenizer", "tokenizer.json", None),
        "bad-tokenizer": broken_model(root, "bad-tokenizer", "tokenizer.json", b'{"version": '),
        "pickle": broken_model(root, "pickle", "model.safetensors", None),
        "half-index": broken_data(root, "half-index", data, index, lambda t: t[: len(t) // 2]),
        "short-item": broken_data(root, "short-item", data, index,
                                  lambda t: json.dumps({**json.loads(t), "7": ["<a_1>", "<b_2>", "<c_3>"]})),
        "bad-line": broken_data(root, "bad-line", data, "sequential_train.txt",
                                lambda t: t.replace("\n", " x\n", 3).replace(" x\n", "\n", 2)),  # line 3 ends in x
    }
    (paths["pickle"] / "pytorch_model.bin").write_bytes(b"a pickle")
    users = root / "users.jsonl"
    users.write_text('{"user": 1, "history": [3, 17]}\n')
    paths["users"] = users
    pd.DataFrame({"user": [1], "history": [[3, 17]]}).to_parquet(root / "users.parquet")
    paths["parquet-as-jsonl"] = root / "parquet.jsonl"
    shutil.copy(root / "users.parquet", paths["parquet-as-jsonl"])
    paths["no-history-column"] = root / "no-history.parquet"
    pd.DataFrame({"user": [1], "items": [[3]]}).to_parquet(paths["no-history-column"])
    paths["users-csv"] = root / "users.csv"
    paths["users-csv"].write_text("user,history\n1,3\n")
    for name, text in {"empty.csv": "", "columns.csv": "uid,iid,ts\n1,2,3\n",
                       "times.csv": "user,item,timestamp\n1,a,2024-01-01\n2,b,yesterday\n",
                       "log.txt": "user item timestamp\n"}.items():
        (root / name).write_text(text)
        paths[name.replace(".", "-")] = root / name
    readonly = root / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    paths["readonly"] = readonly if not os.access(readonly, os.W_OK) else Path("/proc")  # root writes anywhere
    return paths


REC = ("recommend", "--data", "{data}", "--target", "{target}")


def one_user(data: str = "{data}", target: str = "{target}") -> tuple[str, ...]:
    return "recommend", "--data", data, "--target", target, "--history", "3"


BATCH = (*REC, "--input", "{users}", "--output")

# (case id, arguments, a regex the one Error line must match: the problem and the file or option it names)
CASES = [
    # recommend: option values
    ("k-zero", (*REC, "--history", "3", "-k", "0"), r"Invalid value for '-k' / '--top-k': 0 is not in the range x>=1"),
    ("k-negative", (*REC, "--history", "3", "-k", "-3"), r"'-k' / '--top-k': -3 is not in the range"),
    ("k-above-catalogue", (*REC, "--history", "3", "-k", "513"),
     r"Invalid value for -k: k must be between 1 and the number of items \(512\), got 513"),
    ("speculative-without-draft", (*REC, "--history", "3", "--method", "speculative"),
     r"Invalid value for --draft: Method 'speculative' needs a draft model"),
    ("empty-history", (*REC, "--history", ""), r"Invalid value for --history: the history is empty"),
    ("history-not-numbers", (*REC, "--history", "3 x"), r"--history: expected item ids like '12 7 301', got '3 x'"),
    ("history-unknown-item", (*REC, "--history", "3 999"), r"--history: items \[999\] are not in the catalogue"),
    ("neither-history-nor-input", REC, r"give exactly one of --history \(one user\) or --input"),
    ("input-without-output", (*REC, "--input", "{users}"), r"--input needs --output"),
    ("ray-for-one-history", (*REC, "--history", "3", "--engine", "ray"),
     r"--engine ray runs batch jobs \(--input\); one --history is decoded here"),
    # recommend: model folders
    ("target-missing", one_user(target="nowhere"), r"'--target': Directory 'nowhere' does not exist"),
    ("no-config", one_user(target="{no-config}"), r"No model at .*no-config: expected a folder with config.json"),
    ("bad-config", one_user(target="{bad-config}"), r"bad-config.*config.json.* is not a valid JSON file"),
    ("no-weights", one_user(target="{no-weights}"), r"no-weights: no model.safetensors"),
    ("garbage-weights", one_user(target="{garbage-weights}"),
     r"garbage-weights/model.safetensors: not a complete safetensors file"),
    ("truncated-draft-weights", (*REC, "--draft", "{half-weights}", "--history", "3"),
     r"half-weights/model.safetensors: not a complete safetensors file"),
    ("no-tokenizer", one_user(target="{no-tokenizer}"), r"no-tokenizer: no tokenizer.json"),
    ("bad-tokenizer", one_user(target="{bad-tokenizer}"), r"bad-tokenizer: cannot load the tokenizer"),
    ("pickle-weights", one_user(target="{pickle}"),
     r"pickle: the weights are in pytorch_model.bin \(a pickle\), and atspeed only loads safetensors.*"
     r"use_safetensors=False\).save_pretrained"),
    # recommend: datasets
    ("truncated-index", one_user(data="{half-index}"), r"half-index/synthetic.index.json: not valid JSON \(line 1\)"),
    ("short-item", one_user(data="{short-item}"), r"short-item/synthetic.index.json: item 7 has 3 tokens"),
    # recommend: batch jobs
    ("output-folder-missing", (*BATCH, "missing/lists.parquet"), r"missing: no such folder for the output"),
    ("output-folder-read-only", (*BATCH, "{readonly}/lists.parquet"), r"cannot write the output there"),
    ("output-not-parquet", (*BATCH, "lists.csv"), r"lists.csv: the output must be a .parquet file"),
    ("parquet-bytes-in-jsonl", ("recommend", "--data", "{data}", "--target", "{target}", "--input",
                                "{parquet-as-jsonl}", "--output", "lists.parquet"),
     r"parquet.jsonl: binary data \(Parquet\?\), not JSON Lines text"),
    ("parquet-without-history", ("recommend", "--data", "{data}", "--target", "{target}", "--input",
                                 "{no-history-column}", "--output", "lists.parquet"),
     r"no-history.parquet: missing column\(s\) \['history'\]"),
    ("input-csv", ("recommend", "--data", "{data}", "--target", "{target}", "--input", "{users-csv}", "--output",
                   "lists.parquet"), r"users.csv: unknown input format '.csv'"),
    ("input-missing", ("recommend", "--data", "{data}", "--target", "{target}", "--input", "none.jsonl", "--output",
                       "lists.parquet"), r"'--input': File 'none.jsonl' does not exist"),
    ("ray-not-installed", (*BATCH, "lists.parquet", "--engine", "ray"),
     r"--engine ray needs Ray, which is not installed: pip install \"atspeed\[ray\]\""),
    # data prepare
    ("prepare-empty-csv", ("data", "prepare", "{empty-csv}", "out"), r"empty.csv: the file is empty"),
    ("prepare-wrong-columns", ("data", "prepare", "{columns-csv}", "out"),
     r"columns.csv: missing column\(s\) \['user', 'item', 'timestamp'\].*--user-col, --item-col, --time-col"),
    ("prepare-bad-timestamp", ("data", "prepare", "{times-csv}", "out"),
     r"times.csv: column 'timestamp', row 2 .*'yesterday' is not a timestamp"),
    ("prepare-unknown-type", ("data", "prepare", "{log-txt}", "out"), r"log.txt: unknown file type"),
    # train, evaluate, teacher
    ("train-bad-line", ("train", "{bad-line}", "out", "--kind", "tiny"),
     r"bad-line/sequential_train.txt, line 3: 'x' is not a positive integer"),
    ("train-save-steps-zero", ("train", "{data}", "out", "--save-steps", "0"),
     r"'--save-steps': 0 is not in the range x>=1"),
    ("train-include-valid-with-validation", ("train", "{data}", "out", "--include-valid"),
     r"include_valid trains on the validation items.*--eval-users 0"),
    ("train-dropout-one", ("train", "{data}", "out", "--dropout", "1"), r"'--dropout': 1.0 is not in the range"),
    ("train-epochs-zero", ("train", "{data}", "out", "--epochs", "0"), r"'--epochs': 0.0 is not in the range x>0"),
    ("train-batch-size-zero", ("train", "{data}", "out", "--batch-size", "0"),
     r"'--batch-size': 0 is not in the range x>=1"),
    ("train-epochs-nan", ("train", "{data}", "out", "--epochs", "nan"), r"'--epochs': nan is not a finite number"),
    ("train-lr-negative", ("train", "{data}", "out", "--lr", "-1"), r"'--lr': -1.0 is not in the range x>0"),
    ("align-alpha-above-one", ("align", "--data", "{data}", "--target", "{target}", "--out", "out", "--alpha", "2"),
     r"'--alpha': 2.0 is not in the range 0<=x<=1"),
    ("align-eval-every-negative", ("align", "--data", "{data}", "--target", "{target}", "--out", "out",
                                   "--eval-every", "-1"), r"'--eval-every': -1 is not in the range x>=0"),
    ("synthetic-no-users", ("data", "synthetic", "out", "--users", "0"), r"'--users': 0 is not in the range x>=1"),
    ("prepare-zero-codes", ("data", "prepare", "{columns-csv}", "out", "--codes", "0"),
     r"'--codes': 0 is not in the range x>=1"),
    ("teacher-zero-chunk-size", ("teacher", "--data", "{data}", "--target", "{target}", "--out", "teacher",
                                 "--chunk-size", "0"), r"'--chunk-size': 0 is not in the range x>=1"),
    ("bench-decode-zero-gamma", ("bench", "decode", "--gamma", "0"), r"'--gamma': 0 is not in the range x>=1"),
    ("ray-zero-actors", (*BATCH, "lists.parquet", "--engine", "ray", "--actors", "0"),
     r"'--actors': 0 is not in the range x>=1"),
    ("evaluate-broken-draft", ("evaluate", "--data", "{data}", "--target", "{target}", "--draft", "{half-weights}",
                               "--out", "results"), r"half-weights/model.safetensors: not a complete safetensors"),
    ("evaluate-bad-ks", ("evaluate", "--data", "{data}", "--target", "{target}", "--ks", "0"),
     r"'--ks': every K must be >= 1"),
    ("evaluate-negative-users", ("evaluate", "--data", "{data}", "--target", "{target}", "--users", "-5"),
     r"'--users': -5 is not in the range x>=1"),
    ("evaluate-zero-draft-beams", ("evaluate", "--data", "{data}", "--target", "{target}", "--draft-beams", "0"),
     r"'--draft-beams': 0 is not in the range x>=1"),
    ("evaluate-zero-batch-size", ("evaluate", "--data", "{data}", "--target", "{target}", "--batch-size", "0"),
     r"'--batch-size': 0 is not in the range x>=1"),
    ("bench-zero-repeats", ("bench", "decode", "--repeats", "0"), r"'--repeats': 0 is not in the range x>=1"),
    ("teacher-ray-not-installed", ("teacher", "--data", "{data}", "--target", "{target}", "--out", "teacher",
                                   "--engine", "ray"), r"--engine ray needs Ray.*pip install \"atspeed\[ray\]\""),
]


def arguments(args: tuple[str, ...], world: dict[str, Path]) -> list[str]:
    return [a.format(**world) for a in args]


def case(name: str) -> tuple[tuple[str, ...], str]:
    return next(c[1:] for c in CASES if c[0] == name)


def check_clean_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert len(result.error_lines) == 1, result.output
    assert re.search(pattern, result.error_lines[0]), result.error_lines[0]


@pytest.mark.parametrize(("args", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_user_error_is_one_error_line_exit_2_and_nothing_written(world, tmp_path, args, pattern):
    result = atspeed(*arguments(args, world), cwd=tmp_path, hide_modules=("ray",))
    check_clean_error(result, pattern)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_batch_output_is_refused_and_kept(world, tmp_path):
    (tmp_path / "lists.parquet").write_bytes(b"old")
    result = atspeed(*arguments(BATCH, world), "lists.parquet", cwd=tmp_path)
    check_clean_error(result, r"lists.parquet exists: choose another output path, or overwrite it .*--overwrite")
    assert [p.name for p in tmp_path.iterdir()] == ["lists.parquet"]
    assert (tmp_path / "lists.parquet").read_bytes() == b"old"


def test_debug_shows_the_traceback_instead(world, tmp_path):
    result = atspeed("--debug", *arguments(case("garbage-weights")[0], world), cwd=tmp_path)
    assert result.exit_code == 1 and "Traceback" in result.stderr and "not a complete safetensors file" in result.stderr


INSTALLED = Path(sys.executable).parent / "atspeed"


@pytest.mark.parametrize("name", ["k-zero", "truncated-draft-weights"])
def test_the_installed_command_prints_the_same(world, tmp_path, name):
    """The fork-server runs above call what the installed script calls; here the script itself runs."""
    args, pattern = case(name)
    argv = arguments(args, world)
    real = subprocess.run([str(INSTALLED), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    forked = atspeed(*argv, cwd=tmp_path)
    errors = [line for line in (real.stdout + real.stderr).splitlines() if line.startswith("Error:")]
    assert (real.returncode, errors) == (forked.exit_code, forked.error_lines)  # progress bars' rates differ
    check_clean_error(forked, pattern)
    assert "Traceback" not in real.stderr


def test_demo_with_a_folder_that_holds_no_model_writes_nothing(tmp_path):
    out, empty = tmp_path / "demo-out", tmp_path / "empty"
    empty.mkdir()
    result = atspeed("demo", "--target", empty, "--out", out, cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert len(result.error_lines) == 1 and "No model at" in result.error_lines[0], result.output
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_engine_on_a_missing_cuda_device_is_one_error_line(tmp_path):
    result = atspeed("bench", "engine", "--device", "cuda", "--batches", "1", "--beams", "2", cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert len(result.error_lines) == 1 and "no CUDA device" in result.error_lines[0], result.output


def test_the_readme_counts_these_cases():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert re.search(r"test_cli_errors\.py` runs (\d+) such cases", readme).group(1) == str(len(CASES))

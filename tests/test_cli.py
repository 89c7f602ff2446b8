"""The command line: every command has --help, and each one runs end to end at a tiny size
(the demo included, with a few training steps instead of the committed weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from atspeed.cli import main
from atspeed.rec.data import load_dataset

COMMANDS = [[], ["data"], ["data", "synthetic"], ["data", "prepare"], ["data", "fix-index"], ["train"], ["teacher"],
            ["align"], ["evaluate"], ["recommend"], ["demo"], ["bench"], ["bench", "decode"], ["bench", "trie"],
            ["bench", "engine"]]


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False) if ok else \
        CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    run("data", "synthetic", root, "--items", 128, "--users", 60)
    return root


@pytest.fixture(scope="module")
def model_dir(data_dir):
    out = data_dir.parent / "tiny"
    run("train", data_dir, out, "--kind", "tiny", "--max-steps", 3, "--batch-size", 8)
    return out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "atspeed")
def test_every_command_has_help(command):
    assert "Usage:" in run(*command, "--help").output


def test_data_synthetic_writes_a_loadable_dataset(data_dir):
    ds = load_dataset(data_dir)
    assert ds.synthetic and ds.num_items == 128 and len(ds.users) == 60


def test_data_prepare_turns_a_csv_log_into_a_dataset(tmp_path):
    log = pd.DataFrame({"user": [u for u in range(20) for _ in range(6)],
                        "item": [f"i{(u * 3 + j) % 15}" for u in range(20) for j in range(6)],
                        "timestamp": list(range(120))})
    log.to_csv(tmp_path / "log.csv", index=False)
    result = run("data", "prepare", tmp_path / "log.csv", tmp_path / "out", "--name", "shop", "--codes", 8)
    assert "15 items, 20 users" in result.output
    assert load_dataset(tmp_path / "out").name == "shop"


def test_data_prepare_records_the_log_and_its_own_column_names(tmp_path):
    log = pd.DataFrame({"uid": [u for u in range(20) for _ in range(6)],
                        "iid": [f"i{(u * 3 + j) % 15}" for u in range(20) for j in range(6)],
                        "ts": list(range(120))})
    log.to_csv(tmp_path / "log.csv", index=False)
    run("data", "prepare", tmp_path / "log.csv", tmp_path / "out", "--codes", 8, "--user-col", "uid",
        "--item-col", "iid", "--time-col", "ts")
    meta = load_dataset(tmp_path / "out").meta
    assert meta["source"] == str(tmp_path / "log.csv") and meta["settings"]["columns"] == ["uid", "iid", "ts"]


def test_train_saves_a_final_model_folder(model_dir):
    assert (model_dir / "final" / "config.json").exists()
    assert (model_dir / "final" / "tokenizer.json").exists()


def test_recommend_prints_k_ranked_items(data_dir, model_dir):
    out = run("recommend", "--data", data_dir, "--target", model_dir, "--history", "3 17 42", "-k", 4).stdout
    rows = out.strip().splitlines()[1:]
    assert [int(r.split()[0]) for r in rows] == [1, 2, 3, 4]
    assert all(r.split()[-1].startswith("<a_") for r in rows)


def test_recommend_refuses_an_unknown_history_item(data_dir, model_dir):
    result = run("recommend", "--data", data_dir, "--target", model_dir, "--history", "3 999", ok=False)
    assert result.exit_code == 2 and "items [999] are not in the catalogue (1 … 128)" in result.output


def test_evaluate_prints_the_table_and_writes_the_report(data_dir, model_dir, tmp_path):
    out = run("evaluate", "--data", data_dir, "--target", model_dir, "--draft", model_dir, "--ks", "2,3",
              "--users", 3, "--out", tmp_path).output
    assert "speculative-relaxed" in out and "lists != HF" in out
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["results"]) == 2 * 5 and payload["meta"]["users"] == 3  # 2 Ks x 5 methods
    assert (tmp_path / "results.png").exists() and (tmp_path / "results.csv").exists()


def test_evaluate_rejects_a_bad_list_of_ks(data_dir, model_dir):
    result = run("evaluate", "--data", data_dir, "--target", model_dir, "--ks", "5,x", ok=False)
    assert result.exit_code == 2 and "expected integers" in result.output


def test_demo_runs_end_to_end_at_a_tiny_size(tmp_path):
    out = run("demo", "--out", tmp_path, "--recipe", "tiny", "--train-steps", 2, "--users", 3, "--ks", "2").output
    assert "synthetic dataset (not real users)" in out
    assert "speculative" in out and "tree" in out
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {r["method"] for r in results} == {"hf", "tree", "speculative", "hf-sample", "speculative-relaxed"}
    assert all(r["mismatches"] == 0 for r in results if r["method"] in ("tree", "speculative"))


def test_bench_decode_runs_and_the_outputs_agree():
    out = run("bench", "decode", "--beams", 4, "--draft-beams", 8, "--prompt-len", 8, "--repeats", 1).output
    assert "NO" not in out and out.count("yes") == 3


def test_bench_engine_prints_the_engine_table_at_a_tiny_size():
    out = run("bench", "engine", "--batches", 1, "--beams", 2, "--methods", "engine tree", "--repeats", 1).output
    assert "measured peak" in out and "engine" in out and "tree" in out


def test_bench_trie_prints_the_vectorised_and_hf_costs(data_dir):
    out = run("bench", "trie", "--data", data_dir, "--batches", 1, "--beams", 2, "--repeats", 1).output
    assert "catalogue: synthetic, 128 items" in out and "HF / vectorised" in out


def test_align_trains_a_draft_from_teacher_data_it_makes(data_dir, model_dir, tmp_path):
    out = run("align", "--data", data_dir, "--target", model_dir, "--teacher", tmp_path / "teacher",
              "--out", tmp_path / "aligned", "--kind", "tiny", "--teacher-beams", 3, "-k", 3, "--max-steps", 2,
              "--batch-size", 4, "--eval-users", 2).output
    assert "best acceptance" in out
    assert (tmp_path / "teacher" / "teacher.safetensors").exists()
    assert (tmp_path / "aligned" / "final" / "config.json").exists()


def test_align_runs_on_two_processes_as_under_accelerate_launch(data_dir, model_dir, tmp_path):
    """Two CPU processes (torchrun, as `accelerate launch` starts them): the main one makes the teacher
    data, both train, and the aligned draft is saved."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "yes", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2, "-m",
               "atspeed.cli", "align", "--data", data_dir, "--target", model_dir, "--teacher", tmp_path / "teacher",
               "--out", tmp_path / "aligned", "--kind", "tiny", "--teacher-beams", 3, "-k", 3, "--max-steps", 2,
               "--batch-size", 4, "--eval-users", 2]
    out = subprocess.run([str(a) for a in command], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("best acceptance") == 2  # one line per process
    assert (tmp_path / "teacher" / "teacher.safetensors").exists()
    assert (tmp_path / "aligned" / "final" / "config.json").exists()


def test_align_keeps_the_target_logits_it_computes_once(data_dir, model_dir, tmp_path):
    for seed in (0, 1):  # the second run reads the first one's folder
        run("align", "--data", data_dir, "--target", model_dir, "--teacher", tmp_path / "teacher",
            "--target-logits", tmp_path / "teacher" / "target-logits", "--out", tmp_path / f"aligned-{seed}",
            "--kind", "tiny", "--teacher-beams", 3, "-k", 3, "--max-steps", 2, "--batch-size", 4,
            "--eval-users", 2, "--seed", seed)
    assert (tmp_path / "teacher" / "target-logits" / "teacher" / "logits.safetensors").exists()
    assert (tmp_path / "aligned-1" / "final" / "config.json").exists()


def test_align_with_a_teacher_method_needs_a_teacher_folder(data_dir, model_dir, tmp_path):
    result = run("align", "--data", data_dir, "--target", model_dir, "--out", tmp_path, ok=False)
    assert result.exit_code == 2 and "give --teacher DIR" in result.output


def test_recommend_runs_a_batch_job_and_reports_bad_rows(data_dir, model_dir, tmp_path):
    users = tmp_path / "users.jsonl"
    users.write_text('{"user": "a", "history": [3, 17]}\n{"user": "b", "history": [999]}\nnot json\n')
    out = run("recommend", "--data", data_dir, "--target", model_dir, "--input", users,
              "--output", tmp_path / "lists.parquet", "-k", 3).stdout
    assert "1 users ->" in out and "2 bad rows ->" in out
    lists = pd.read_parquet(tmp_path / "lists.parquet")
    assert list(lists["user"]) == ["a"] and len(lists["items"][0]) == 3


def test_recommend_refuses_to_overwrite_a_batch_output_without_the_flag(data_dir, model_dir, tmp_path):
    users = tmp_path / "users.jsonl"
    users.write_text('{"user": 1, "history": [3]}\n')
    args = ["recommend", "--data", data_dir, "--target", model_dir, "--input", users,
            "--output", tmp_path / "lists.parquet"]
    run(*args)
    result = run(*args, ok=False)
    assert result.exit_code == 2 and "exists" in result.output
    run(*args, "--overwrite")


def test_recommend_needs_exactly_one_of_history_and_input(data_dir, model_dir):
    result = run("recommend", "--data", data_dir, "--target", model_dir, ok=False)
    assert result.exit_code == 2 and "exactly one of --history" in result.output


def test_demo_uses_the_committed_models_by_default(tmp_path):
    out = run("demo", "--out", tmp_path, "--users", 2, "--ks", "3").output
    assert "committed weights" in out and "training" not in out
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert all(r["mismatches"] == 0 for r in results if r["method"] in ("tree", "speculative"))


def test_recommend_without_target_uses_the_models_committed_for_the_dataset(synthetic_dir):
    from atspeed.rec.recommend import PRETRAINED

    history = ("--history", "3 17 42", "-k", 4)
    default = run("recommend", "--data", synthetic_dir, *history).stdout
    assert default == run("recommend", "--data", synthetic_dir, "--target", PRETRAINED / "synthetic-target",
                          *history).stdout


def test_without_target_a_dataset_with_no_committed_model_is_a_usage_error(data_dir, tmp_path):
    import shutil

    other = shutil.copytree(data_dir, tmp_path / "shop")
    (other / "synthetic.index.json").rename(other / "shop.index.json")
    result = run("recommend", "--data", other, "--history", "3", ok=False)
    assert result.exit_code == 2 and "give --target" in result.output

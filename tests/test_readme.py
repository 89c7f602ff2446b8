"""Every ```python block of the README runs as written, so the documented API cannot rot.

Snippets that continue from the user's own code (`model`, `inputs`, `target_model`, K, ...) get those
names from `placeholders()`: the built-in random models and a short prompt. A block may be skipped
only for a reason listed in SKIP (data under ../shared, a GPU); each block runs in a fresh namespace
and a fresh working directory, so the blocks do not depend on each other.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import make_model

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
# a block that contains the key may be skipped, for the reason given (data that is not in the repository, a GPU)
SKIP = {"../shared/": "needs the datasets under ../shared", '"cuda"': "needs a GPU"}


def placeholders() -> dict:
    """What the README's partial snippets assume the reader already has: a tiny model (`model`), the
    built-in draft/target pair, a short prompt for both (same vocabulary), K, N and gamma."""
    from atspeed.models import draft_target_pair

    target, draft = draft_target_pair("cpu", noise=0.0)
    ids = torch.randint(3, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"model": make_model(vocab_size=64), "target_model": target, "draft_model": draft, "inputs": inputs,
            "K": 5, "N": 10, "gamma": 3}


def run_block(block: str) -> dict:
    namespace = placeholders()
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


def block_id(block: str) -> str:
    return block.strip().splitlines()[0][:60]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(b) for b in BLOCKS])
def test_every_python_block_runs(block, tmp_path, monkeypatch):
    for key, reason in SKIP.items():
        if key in block:
            pytest.skip(reason)
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    run_block(block)


def test_the_complete_example_needs_one_target_call_for_speculation(capsys):
    example = next(b for b in BLOCKS if "draft_target_pair" in b)
    exec(compile(example, str(README), "exec"), {})
    assert capsys.readouterr().out.split() == ["1", "3.0", "1"]

"""`atspeed --help` and argument errors answer at once: the command line imports torch, transformers and
the rest of the stack only inside the command that needs them, and reads its choice lists from their
owners' source instead of importing them."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from atspeed import cli

HEAVY = ("torch", "transformers", "pandas", "sklearn", "ray")


def modules_loaded_by(*args: str) -> set[str]:
    """The heavy modules loaded in a fresh interpreter by `atspeed ARGS` (which exits)."""
    code = ("import sys\nfrom atspeed.cli import main\ntry:\n    main(sys.argv[1:], prog_name='atspeed')\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    return set(eval(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["recommend", "--help"], ["bench", "engine", "--help"],
                                  ["train", "--help"], ["align", "--help"], ["recommend", "--data"],
                                  ["evaluate", "--ks", "0"], ["recommend", "--data", ".", "--target", "."],
                                  ["serve", "--help"], ["serve", "--method", "nope"]],
                         ids=" ".join)
def test_help_and_argument_errors_do_not_import_torch(args):
    assert modules_loaded_by(*args) == set()


@pytest.mark.parametrize(("module", "name", "value"), [
    ("atspeed.rec.recommend", "METHODS", cli.METHODS),
    ("atspeed.align.trainer", "METHODS", cli.ALIGN_METHODS),
    ("atspeed.align.trainer", "TEACHER_METHODS", cli.TEACHER_METHODS),
    ("atspeed.benchmarking", "ENGINE_METHODS", cli.ENGINE_METHODS),
    ("atspeed.benchmarking", "ALL_ENGINE_METHODS", cli.ALL_ENGINE_METHODS),
    ("atspeed.models", "SIZES", cli.MODEL_SIZES),
    ("atspeed.rec.experiment", "DEMO_RECIPES", cli.DEMO_RECIPES),
    ("atspeed.rec.train", "OBJECTIVES", cli.OBJECTIVES),
    ("atspeed.serve.config", "SERVE_METHODS", cli.SERVE_METHODS),
    ("atspeed.serve.config", "SERVE_ENGINES", cli.SERVE_ENGINES),
])
def test_choices_read_from_source_are_their_owners_values(module, name, value):
    assert tuple(getattr(importlib.import_module(module), name)) == value

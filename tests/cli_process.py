"""Run the `atspeed` command in a process of its own, fast, optionally killed at a chosen point.

Each run is a fresh process forked from a multiprocessing fork server that has imported the
libraries the commands load when they run (torch and transformers take ~6 s here; a fork ~50 ms). The
child calls `atspeed.cli.main`, which is what the installed `atspeed` script calls, with its own
stdout, stderr, working directory and exit status; an uncaught exception prints its traceback and
exits 1, as in the real command. `tests/test_cli_errors.py` also runs a few cases through the
installed script to show that both give the same output.

`kill` names a point (see KILL_POINTS) where the child sends itself SIGKILL, like a crash or an
OOM kill: no exception handler, `finally` or atexit runs.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
# `atspeed.cli` itself imports none of them (startup stays fast), so they are named here
_CONTEXT.set_forkserver_preload(["atspeed.cli", "atspeed.rec.recommend", "atspeed.rec.batch", "atspeed.rec.train",
                                 "cli_process"])


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("Error:")]


def atspeed(*args: object, cwd: Path, hide_modules: tuple[str, ...] = (), kill: tuple | None = None,
            timeout: float = 300) -> Result:
    """`atspeed ARGS` in `cwd`; `hide_modules` cannot be imported there; `kill` = (point, *arguments)."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    child = _CONTEXT.Process(target=_main, args=([str(a) for a in args], str(cwd), str(out), str(err),
                                                 hide_modules, kill))
    child.start()
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        raise TimeoutError(f"atspeed {' '.join(map(str, args))} ran for more than {timeout} s")
    result = Result(child.exitcode, out.read_text(), err.read_text())
    out.unlink()
    err.unlink()
    return result


def _main(args, cwd, out, err, hide_modules, kill) -> None:
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    os.chdir(cwd)
    for name in hide_modules:
        sys.modules[name] = None  # `import name` raises ModuleNotFoundError, as if not installed
    if kill is not None:
        KILL_POINTS[kill[0]](*kill[1:])
    from atspeed.cli import main

    main(args, prog_name="atspeed")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_checkpoint_weights(step: int) -> None:
    """While checkpoint-`step` is saved: its model files are written, the optimizer and state are not."""
    from transformers import Trainer

    save = Trainer._save_optimizer_and_scheduler

    def save_or_die(self, output_dir):
        if self.state.global_step == step:
            _die()
        return save(self, output_dir)

    Trainer._save_optimizer_and_scheduler = save_or_die


def _kill_in_step(step: int) -> None:
    """In the middle of training step `step` (1-based), after the checkpoints of earlier steps."""
    from transformers import Trainer

    training_step = Trainer.training_step

    def step_or_die(self, *args, **kwargs):
        if self.state.global_step == step - 1:
            _die()
        return training_step(self, *args, **kwargs)

    Trainer.training_step = step_or_die


def _kill_at_rename(n: int) -> None:
    """At the `n`-th rename of a finished temporary to its real name (atspeed.files)."""
    import atspeed.files

    replace, calls = os.replace, [0]

    def replace_or_die(src, dst):
        calls[0] += 1
        if calls[0] == n:
            _die()
        return replace(src, dst)

    atspeed.files.os = _Proxy(os, replace=replace_or_die)


class _Proxy:
    """A module with some attributes replaced."""

    def __init__(self, module, **replaced):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._module, name)


def _kill_while_writing(n: int) -> None:
    """While the `n`-th batch output file is written to its temporary (atspeed.rec.batch)."""
    import atspeed.rec.batch as batch

    write, calls = batch._write_parquet, [0]

    def write_or_die(table, path):
        calls[0] += 1
        if calls[0] == n:
            Path(path).write_bytes(b"PAR1 half a file")
            _die()
        return write(table, path)

    batch._write_parquet = write_or_die


KILL_POINTS = {
    "checkpoint-weights": _kill_after_checkpoint_weights,
    "step": _kill_in_step,
    "rename": _kill_at_rename,
    "writing": _kill_while_writing,
}

"""Every `atspeed ...` command line in the README's ```bash blocks is one the CLI accepts: the
subcommand exists, each option is one of its options, the option values that are not paths convert to
their types, and the positional arguments fit. The commands are parsed, not run: they name the
reader's folders, a Ray cluster or a day of training. What they do is tested with small arguments in
test_cli*.py; this keeps the documented spelling of each command from rotting. Optional parts written
`[...]` are checked both with and without them. Scripts the blocks run must exist.
"""

from __future__ import annotations

import enum
import itertools
import re
import shlex
from pathlib import Path

import click
import pytest

from atspeed.cli import main

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def command_lines() -> list[str]:
    """The blocks' lines, continuations joined."""
    return [line.strip() for block in BLOCKS for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def variants(line: str) -> list[list[str]]:
    """The line's words, comment dropped, with each `[...]` part in or out (every combination)."""
    parts = re.split(r"\[([^\]]*)\]", line)  # even: always there; odd: optional
    optional = parts[1::2]
    out = []
    for keep in itertools.product([True, False], repeat=len(optional)):
        text = parts[0] + "".join((opt if k else "") + rest for opt, k, rest in zip(optional, keep, parts[2::2]))
        out.append(shlex.split(text, comments=True))
    return out


ATSPEED = [words for line in command_lines() if line.startswith("atspeed ") for words in variants(line)]
SCRIPTS = sorted({w for line in command_lines() for w in shlex.split(line, comments=True)
                  if re.match(r"^(scripts|benchmarks)/", w)})


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command the words name and the arguments left for it."""
    command, rest = main, words[1:]
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"atspeed has no command {' '.join(words[: words.index(name) + 1])!r}"
        command = sub
    return command, rest


def test_the_readme_shows_cli_commands():
    assert len(ATSPEED) >= 20


@pytest.mark.parametrize("words", ATSPEED, ids=[" ".join(w)[:70] for w in ATSPEED])
def test_every_documented_command_parses(words):
    command, args = resolve(words)
    ctx = click.Context(command, info_name=command.name)
    options, extra, _ = command.make_parser(ctx).parse_args(args)  # unknown options raise UsageError
    assert extra == [], f"arguments {extra} are more than {command.name} takes"
    for param in command.params:
        value = options.get(param.name)
        if value is None or isinstance(value, enum.Enum):  # not given (click marks that with an enum sentinel)
            assert not param.required, f"{param.name} is required"
        elif not isinstance(param.type, (click.Path, click.File)):
            param.type_cast_value(ctx, value)  # a value of the wrong type raises BadParameter

def test_a_misspelt_option_would_fail():
    command, args = resolve(["atspeed", "evaluate", "--data", "DIR", "--user", "500"])
    with pytest.raises(click.UsageError, match="No such option '--user'"):
        command.make_parser(click.Context(command)).parse_args(args)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_the_readme_runs_exists(script):
    assert (ROOT / script).is_file()

"""The README's complete example runs as written and prints what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def runnable_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if "draft_target_pair" in b)


def test_readme_example_runs_and_speculation_needs_one_target_call(capsys):
    exec(compile(runnable_example(), str(README), "exec"), {})
    assert capsys.readouterr().out.split() == ["1", "3.0", "1"]

"""Atomic writes: a file or folder under its real name is always complete.

Everything atspeed writes (datasets, models, teacher data, reports, batch outputs) goes through
here: the content is written to a temporary name in the same folder, flushed, then renamed, so an
error or a crash leaves the old file (or nothing), never half of a new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def _temp_file(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; our outputs are not
    return Path(tmp)


def write_with(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temp_path)` (e.g. a library's save function), then rename the result to `path`."""
    path = Path(path)
    tmp = _temp_file(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda tmp: _write_synced(tmp, data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_together(writes: Mapping[Path, Callable[[Path], object]], *, remove_first: Sequence[Path] = ()) -> None:
    """Files that belong together: every `write(temp_path)` runs first, and the temporaries are renamed
    (in the mapping's order) only once all of them succeeded. `remove_first` files are deleted just
    before the renames, so a reader never sees them beside a new file."""
    temps: list[Path] = []
    try:
        for path, write in writes.items():
            temps.append(_temp_file(Path(path)))
            write(temps[-1])
        for path in remove_first:
            Path(path).unlink(missing_ok=True)
        for tmp, path in zip(temps, writes, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def write_texts(root: str | os.PathLike, contents: Mapping[str, str]) -> None:
    """Text files under `root`, written together (see write_together)."""
    root = Path(root)
    write_together({root / name: (lambda tmp, t=text: _write_synced(tmp, t.encode()))
                    for name, text in contents.items()})


def write_dir(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(temp_folder)`, then put the folder at `path`, replacing an older one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        old = path.parent / f".{path.name}-old-{uuid.uuid4().hex}"
        if path.exists():
            os.replace(path, old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path

"""Atomic writes: a file or folder under its real name is always complete.

Everything atspeed writes (datasets, models, teacher data, reports, batch outputs) goes through
here: the content is written to a temporary name in the same folder, flushed, then renamed, so an
error or a crash leaves the old file (or nothing), never half of a new one.

A temporary's name holds the writer's host and process id (`.lists.parquet.tmp-HOST-PID-…`), so
the next write of the same path removes what a killed writer on this machine left behind, and
never the temporaries of a writer that is still running.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_HOST = socket.gethostname().replace("-", "_")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{_HOST}-{os.getpid()}-"


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of `path` left by writers on this machine that are no longer running."""
    path = Path(path)
    prefix = f".{path.name}.tmp-{_HOST}-"
    removed = []
    for tmp in path.parent.glob(glob.escape(prefix) + "*"):
        pid = tmp.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temp_file(path: Path) -> Path:
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
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
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path)))
    try:
        os.chmod(tmp, 0o755)
        write(tmp)
        swap_dir(tmp, path, Path(f"{tmp}.old"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def swap_dir(new: Path, path: Path, old: Path) -> None:
    """Put the folder `new` at `path`. A folder cannot be renamed over a non-empty one, so an older
    folder at `path` moves to `old` first and is removed last: an interruption leaves one of them."""
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)

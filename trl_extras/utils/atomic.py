"""Write state that a later run trusts so that it is complete or absent.

A process killed while writing (``kill -9``, OOM, preemption) must never leave a file or directory that a resumed
run reads as finished. Every writer here writes to a temporary name in the same directory, flushes and fsyncs it,
then ``os.replace``-s it onto the final name (atomic on POSIX and Windows) and fsyncs the directory. Multi-file
state (a checkpoint) gets a completion marker written last, the same way.

``kill_point(name)`` is a test hook: when the environment variable ``TRL_EXTRAS_KILL_AT`` equals ``name`` the
process SIGKILLs itself there, so tests kill real processes at the dangerous moment instead of by timing luck.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "KILL_ENV",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "fsync_dir",
    "fsync_tree",
    "kill_point",
    "publish_dir",
    "read_json",
]

KILL_ENV = "TRL_EXTRAS_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process when ``TRL_EXTRAS_KILL_AT == name`` (tests of crash safety; a no-op otherwise)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a directory's entries (renames into it) where the OS allows opening directories."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # Windows: directories cannot be opened; renames are durable there anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under ``path`` and the directories themselves (before a completion marker is written)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb+") as f:
                    os.fsync(f.fileno())
            except OSError:
                pass
        fsync_dir(root)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_writer(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp_path)`` writes the file (``safetensors.save_file``, ``torch.save``, ``Dataset.to_json``...);
    it is then fsynced and renamed onto ``path``. On an exception the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_writer(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, **dumps_kwargs) -> Path:
    dumps_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def read_json(path: str | os.PathLike, what: str = "file"):
    """``json.load`` with an error that names the file when it is not valid JSON (truncated, hand-edited)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); delete it or restore it from a good copy.") from err


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Move a fully written ``tmp_dir`` onto ``final_dir`` (replacing it): readers see the old or the new whole.

    ``os.replace`` cannot replace a non-empty directory, so an existing ``final_dir`` is first renamed aside and
    removed after the swap; a crash in between leaves ``final_dir`` absent (and the old copy under a ``.old`` name),
    never half written.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_tree(tmp_dir)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final_dir

"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file bnnbench writes into a run directory (configs, the run marker, metrics, evaluations,
packed exports) goes through here: the bytes land in a temporary file in the same directory, are
fsynced, and then ``os.replace`` swaps it in (atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, it replaces ``path``.

    For writers that take a file name (e.g. ``safetensors.torch.save_file``). On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # after the writer: mkstemp's 0600 (or a writer that recreates the file, as
        # safetensors does) would make shared run files and exports private
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:  # the writer may not have synced: the rename must not
            os.fsync(fh.fileno())     # outrun the data on a crash
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; returns ``path``."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def free_path(path: Path) -> Path:
    """``path`` if it does not exist, else ``stem-1.suffix``, ``stem-2.suffix``, ... (a result
    never replaces one already written)."""
    if not path.exists():
        return path
    i = 1
    while (candidate := path.with_name(f"{path.stem}-{i}{path.suffix}")).exists():
        i += 1
    return candidate


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry); not supported everywhere: best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

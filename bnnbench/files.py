"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one;
and bounded reads of the files a user can hand us.

Every file bnnbench writes into a run directory (configs, the run marker, metrics, evaluations,
packed exports) goes through here: the bytes land in a temporary file in the same directory, are
fsynced, and then ``os.replace`` swaps it in (atomic on POSIX within one filesystem). A result
that must never replace another (an export, an evaluation) is linked into place instead:
``link`` fails on an existing name, so of two writers racing for one name exactly one gets it.
A write that fails (a full disk, a read-only directory) is :class:`WriteFailed`: one line naming
the file, and the file as it was before.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bnnbench.errors import BnnbenchError, first_line

#: the largest run-directory file (metrics.json, a config, eval.json) bnnbench reads: far above
#: any real one (a long run's curves are a few hundred KiB), far below what would stall a report
MAX_READ_BYTES = 16 * 2**20
#: YAML aliases (``*name``) a run-directory config may use: the configs bnnbench writes have
#: none (OmegaConf writes every value out); a few are harmless, many are an expansion bomb
MAX_YAML_ALIASES = 16
#: values (leaves and containers, each alias's counted again) a config may expand to, and its
#: nesting: a real resolved config has a few hundred values, a few levels deep
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


class WriteFailed(BnnbenchError):
    """A file could not be written (full disk, read-only directory, ...); the message names it
    and says that it, and every file written before it, is as it was."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code  # what failed, for a writer around this one (a staged export)


class NameTaken(BnnbenchError):
    """Another process wrote the file while this one was writing it (nothing was replaced)."""


@contextmanager
def atomic_path(path: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, it becomes ``path``.

    For writers that take a file name (e.g. ``safetensors.torch.save_file``). On an exception the
    temporary file is removed and ``path`` is untouched; a failed write (the disk is full, the
    directory read-only) is :class:`WriteFailed`. ``replace=False``: ``path`` must not exist when
    the block ends, else :class:`NameTaken` (a result is never replaced, even by a racing
    process).
    """
    path = Path(path)
    existed = path.exists()
    # a directory that cannot be made (under a file, read-only) stays an OSError naming it, which
    # the CLIs print as one line (bnnbench.errors.call_or_exit)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _write_failed(path, err, existed) from None
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            # after the writer: mkstemp's 0600 (or a writer that recreates the file, as
            # safetensors does) would make shared run files and exports private
            os.chmod(tmp, 0o666 & ~_umask())
            with open(tmp, "rb+") as fh:  # the writer may not have synced: the rename must
                os.fsync(fh.fileno())     # not outrun the data on a crash
            if replace:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path)
        except Exception as err:
            code = _write_errno(err, (tmp, path))
            if code is None:
                raise
            raise _write_failed(path, OSError(code, os.strerror(code)), existed) from None
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes, *, replace: bool = True) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; returns ``path``.
    ``replace=False``: a new file only (see :func:`atomic_path`)."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path, replace=replace) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def _link_new(tmp: Path, path: Path) -> None:
    """Give the written ``tmp`` the name ``path`` unless that name exists (atomically)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise NameTaken(f"{path} was written by another process while this one was writing "
                        "it; nothing was replaced: rerun to write the next free name") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # a filesystem without hard links: claim the name exclusively, then fill it
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise NameTaken(f"{path} was written by another process while this one was "
                            "writing it; nothing was replaced: rerun to write the next free "
                            "name") from None
        os.replace(tmp, path)


# a Rust writer's I/O error as text (safetensors: "I/O error: No space left on device (os
# error 28)")
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")


def _write_errno(err: BaseException, ours: tuple[Path, Path]) -> int | None:
    """The errno of a failed write of one of ``ours``; None for anything else (a writer's own
    bug, or an OSError about another file it read)."""
    if isinstance(err, WriteFailed):  # a nested writer's (its own temporary file): ours
        return err.errno
    if isinstance(err, OSError):
        if err.errno is None:
            return None
        # a writer's own staging (Lightning's writes a temporary file, then moves it onto
        # ours) names ours as the second file
        named = [Path(n) for n in (err.filename, err.filename2) if n is not None]
        return err.errno if not named or any(n in ours for n in named) else None
    found = _OS_ERROR_TEXT.search(str(err))
    return int(found.group(1)) if found else None


def _write_failed(path: Path, err: OSError, existed: bool) -> WriteFailed:
    reason = err.strerror or type(err).__name__
    kept = "keeps its previous content" if existed else "was not created"
    fix = ("free some space or choose another directory" if err.errno in (errno.ENOSPC,
                                                                           errno.EDQUOT)
           else "check the directory (permissions, mount) or choose another one")
    return WriteFailed(f"could not write {path} ({reason}): it {kept}, and every file written "
                       f"before it is intact; {fix}, then rerun", err.errno or errno.EIO)


def free_path(path: Path) -> Path:
    """``path`` if it does not exist, else ``stem-1.suffix``, ``stem-2.suffix``, ... (a result
    never replaces one already written; write it with ``replace=False`` so that a process
    racing for the same name cannot either)."""
    if not path.exists():
        return path
    i = 1
    while (candidate := path.with_name(f"{path.stem}-{i}{path.suffix}")).exists():
        i += 1
    return candidate


# ------------------------------------------------------------------------------------- reads
def read_bounded(path: Path, limit: int = MAX_READ_BYTES) -> bytes:
    """The bytes of ``path``; BnnbenchError naming it when it is larger than ``limit`` (read
    no further than that) or cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        raise BnnbenchError(f"{path} cannot be read ({err.strerror or first_line(err)})") \
            from None
    if len(data) > limit:
        raise BnnbenchError(f"{path} is larger than {limit:,} bytes: not a file bnnbench "
                            "wrote; refused")
    return data


def read_json(path: Path, limit: int = MAX_READ_BYTES) -> Any:
    """The JSON value in ``path`` (at most ``limit`` bytes); BnnbenchError naming the file when
    it is too large, not UTF-8, not JSON, or nested too deeply to parse."""
    data = read_bounded(path, limit)
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else first_line(err)
        raise BnnbenchError(f"{path} is not readable JSON ({reason})") from None


def read_yaml(path: Path, limit: int = MAX_READ_BYTES) -> Any:
    """The plain data in a YAML file a user may hand us (a run directory's config): no tags
    beyond YAML's own (safe loader), no OmegaConf interpolation or resolver (``${...}`` stays
    text), at most :data:`MAX_YAML_ALIASES` aliases, :data:`MAX_YAML_VALUES` values and
    :data:`MAX_YAML_DEPTH` levels. BnnbenchError naming the file for anything else."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        text = read_bounded(path, limit).decode()
        # counted on the event stream, before anything is built: merge keys (<<: [*a, *a])
        # expand while the mapping is constructed
        aliases = sum(isinstance(event, yaml.AliasEvent)
                      for event in yaml.parse(text, Loader=loader))
        if aliases > MAX_YAML_ALIASES:
            raise BnnbenchError(f"{path} uses {aliases} YAML aliases (at most "
                                f"{MAX_YAML_ALIASES}): not a config bnnbench wrote; refused")
        value = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise BnnbenchError(f"{path} is not readable YAML ({first_line(err)})") from None
    _check_expansion(path, value)
    return value


def _check_expansion(path: Path, value: Any) -> None:
    """Refuse a value that expands (aliases walked as often as they are used, as every reader
    of the plain data does) to more than :data:`MAX_YAML_VALUES` values or
    :data:`MAX_YAML_DEPTH` levels; a self-referencing alias never ends and is refused too."""
    budget = MAX_YAML_VALUES
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_YAML_DEPTH:
            raise BnnbenchError(f"{path} expands to more than {MAX_YAML_VALUES:,} values or "
                                f"{MAX_YAML_DEPTH} levels: not a config bnnbench wrote; refused")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


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

"""Atomic writes: a crash (or an exception) mid-write leaves the previous file whole."""

from __future__ import annotations

import os
import stat

import pytest

from bnnbench.files import atomic_path, write_atomic


def test_a_failed_write_leaves_the_previous_file_and_no_debris(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_write_atomic_replaces_with_the_umask_permissions(tmp_path):
    path = write_atomic(tmp_path / "sub" / "eval.json", "new\n")
    assert path.read_text() == "new\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_a_writer_that_recreates_the_file_still_gets_the_umask_permissions(tmp_path):
    """safetensors' save_file replaces the temporary file with a private (0600) one: the packed
    export must still be readable by the people the run directory is shared with."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    umask = os.umask(0o022)
    os.umask(umask)
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    mode = stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode)
    assert mode == 0o666 & ~umask

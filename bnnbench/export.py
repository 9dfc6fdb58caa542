"""``python -m bnnbench.export``: a trained run as one packed safetensors file.

``python -m bnnbench.export run_dir=<dir> | ckpt_path=<file.ckpt> [checkpoint=last|best]
[out=<file or dir>]``, a Hydra app (``conf/export.yaml``: ``--help``, ``--cfg job``), writes
``<run_dir>/packed.safetensors`` (never overwriting: a taken name gets ``-1``, ``-2``...) and
compares its size on disk with the ``deployed`` accounting of :mod:`bnnbench.size`.

The file format, its loader and the packed layers' kernel routes are :mod:`bnnbench.packed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnnbench.files import atomic_path, free_path
from bnnbench.packed.format import read_metadata, save_packed
from bnnbench.size import format_bytes
from bnnbench.trained import load_trained, resolve_source

PACKED_FILE = "packed.safetensors"


def export_run(run_dir: Path | None, out: Path | None = None, checkpoint: str = "last",
               ckpt_path: Path | None = None) -> Path:
    """Export a trained run to one safetensors file; returns its path (never overwrites).

    The weights: ``ckpt_path``, else ``<run_dir>/checkpoints/<checkpoint>.ckpt``. ``out``: a file
    or a directory (default: the run directory; a checkpoint outside any run: the current one).
    """
    run_dir, ckpt = resolve_source(run_dir, ckpt_path, checkpoint)
    net, spec, geometry = load_trained(run_dir, ckpt_path=ckpt)
    path = Path(out) if out is not None else (run_dir or Path.cwd()) / PACKED_FILE
    if path.is_dir():
        path = path / PACKED_FILE
    path = free_path(path)
    # linked into place only if the name is still free: of two exports racing for one name, the
    # second is refused (NameTaken) instead of replacing the first's file
    with atomic_path(path, replace=False) as staged:
        save_packed(net, staged, spec, geometry, source=str(ckpt))
    return path


def export_config(cfg: Any) -> Path:
    """The Hydra app's job (conf/export.yaml): export, then compare the file with the accounting."""
    from bnnbench.cli import output_of

    path = export_run(cfg.run_dir, output_of(cfg), checkpoint=str(cfg.checkpoint),
                      ckpt_path=cfg.ckpt_path)
    meta = read_metadata(path)
    on_disk = path.stat().st_size
    accounted = int(meta["deployed_bytes"])
    print(f"wrote {path}: {format_bytes(on_disk)} ({on_disk:,} bytes) on disk; accounting "
          f"(deployed) {accounted:,} bytes; header and padding {on_disk - accounted:,} bytes")
    return path


def main() -> None:
    """``python -m bnnbench.export`` / ``bnnbench export``: a Hydra app on conf/export.yaml."""
    from bnnbench.cli import hydra_app

    hydra_app("export", export_config)()


if __name__ == "__main__":
    main()

"""The lines a person reads when a run ends: its result, where its files are, what to run next."""

from __future__ import annotations

import shlex
from pathlib import Path

from bnnbench.record import METRICS_FILE, RunRecord

MIB = 2**20


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to paste),
    quoted for a shell."""
    path = Path(path).absolute()
    try:
        text = str(path.relative_to(Path.cwd()))
    except ValueError:
        text = str(path)
    return shlex.quote(text)


def percent(value: float | None) -> str:
    """``94.12 %``; ``-`` for a run without the number (e.g. one that diverged)."""
    return "-" if value is None or value != value else f"{value:.2f} %"


def summary_lines(record: RunRecord, run_dir: Path, checkpoints: list[Path],
                  report_dir: Path) -> list[str]:
    """The end-of-run summary as plain lines (what :func:`print_summary` prints)."""
    size = record.extra.get("size", {})
    lines = [
        f"{record.method} · {record.model} · {record.data} · seed {record.seed} · "
        f"{record.epochs} epoch{'s' if record.epochs != 1 else ''} in {record.wall_time_s:.1f} s"
        f" on {record.device}",
        f"  test top-1    {percent(record.test_top1)}   top-5 {percent(record.test_top5)}   "
        f"(best val top-1 {percent(record.best_val_top1)})",
    ]
    if size:
        lines.append(f"  deployed      {size['total_bytes'] / MIB:.3f} MiB, compression "
                     f"{size['compression']:.1f}x (float32: {size['fp32_bytes'] / MIB:.3f} MiB)")
    lines += [f"  run dir       {shown(run_dir)}",
              f"  metrics       {shown(Path(run_dir) / METRICS_FILE)}"]
    if checkpoints:
        lines.append("  checkpoints   " + ", ".join(shown(p) for p in checkpoints))
    else:
        lines.append("  checkpoints   none (no model_checkpoint callback): nothing to "
                     "evaluate or export")
    lines.append("next:")
    if checkpoints:
        lines += [f"  python -m bnnbench.evaluate run_dir={shown(run_dir)}",
                  f"  python -m bnnbench.export run_dir={shown(run_dir)}"]
    lines.append(f"  python -m bnnbench.report {shown(report_dir)}")
    return lines


def print_summary(record: RunRecord, run_dir: Path, checkpoints: list[Path],
                  report_dir: Path) -> None:
    """Print :func:`summary_lines` to stdout (rich: headings bold; never wrapped, so each
    command can be copied whole). Called on rank 0 only."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    lines = summary_lines(record, run_dir, checkpoints, report_dir)
    console.print()
    for i, line in enumerate(lines):
        bold = i == 0 or line == "next:"
        console.print(f"[bold]{escape(line)}[/bold]" if bold else escape(line))

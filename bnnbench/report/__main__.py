"""Regenerate comparison tables: ``python -m bnnbench.report <table|all> [--run] [-- overrides]``.

Each table is a sweep in ``conf/sweep/<table>.yaml``. ``--run`` launches it
(``python -m bnnbench -m +sweep=<table> ...``) into ``multirun/<table>/<time>``; then the newest
runs of that table (or ``--runs DIR``) are grouped by the swept settings and written to
``reports/<table>.md`` and ``.csv`` with the papers' numbers beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from bnnbench import CONFIG_DIR
from bnnbench.errors import BnnbenchError
from bnnbench.report.collect import find_runs, group_rows, load_published
from bnnbench.report.record import RunRecord
from bnnbench.report.render import write_report

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = Path(CONFIG_DIR) / "sweep"
PUBLISHED = ROOT / "reports" / "reference" / "published.csv"


def list_tables() -> list[str]:
    return sorted(p.stem for p in SWEEPS.glob("*.yaml"))


def sweep_keys(table: str) -> list[str]:
    """The settings a table varies (its sweeper params, seeds excluded), in file order."""
    params = OmegaConf.load(SWEEPS / f"{table}.yaml").hydra.sweeper.params
    return [k.lstrip("+") for k in params if k != "seed"]


def sweep_title(table: str) -> str:
    """The sweep file's leading comment (continuation lines up to the first blank-ish one)."""
    lines = []
    for line in (SWEEPS / f"{table}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if "@package" in text:
            continue
        if not text or text.startswith("python -m"):
            break
        lines.append(text)
    return " ".join(lines) or table


def launch(table: str, overrides: list[str], runs_root: Path) -> Path:
    """Run the table's sweep; returns its multirun directory."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    sweep_dir = runs_root / table / stamp
    cmd = [sys.executable, "-m", "bnnbench", "-m", f"+sweep={table}",
           f"hydra.sweep.dir={sweep_dir}", *overrides]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return sweep_dir


def newest_runs(table: str, runs_root: Path) -> Path:
    candidates = sorted((runs_root / table).glob("*"))
    if not candidates:
        raise BnnbenchError(f"no runs for table {table!r} under {runs_root / table}; run "
                            f"`python -m bnnbench.report {table} --run` first")
    return candidates[-1]


def render(table: str, runs_dir: Path, out_dir: Path, command: str) -> Path:
    records = [RunRecord.read(d) for d in find_runs([runs_dir])]
    if not records:
        raise BnnbenchError(f"no finished run (metrics.json) under {runs_dir}")
    rows = group_rows(records, sweep_keys(table))
    path = out_dir / f"{table}.md"
    write_report(path, title=sweep_title(table), command=command, rows=rows,
                 published=load_published(PUBLISHED, table), runs_dir=runs_dir,
                 date=dt.date.today().isoformat(), table=table)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnnbench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", help=f"'all' or any of: {', '.join(list_tables())}")
    parser.add_argument("--run", action="store_true", help="launch the sweep before rendering")
    parser.add_argument("--runs", type=Path, help="render these runs instead of the newest sweep")
    parser.add_argument("--runs-root", type=Path, default=Path("multirun"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.epilog = "Hydra overrides for every run go after --, e.g. -- trainer.max_epochs=20"
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]
    tables = list_tables() if args.tables == ["all"] else args.tables
    try:
        unknown = [t for t in tables if t not in list_tables()]
        if unknown:
            raise BnnbenchError(f"unknown table {unknown[0]!r}; valid tables: "
                                f"{', '.join(list_tables())}, all")
        for table in tables:
            runs_dir = args.runs or (launch(table, args.overrides, args.runs_root) if args.run
                                     else newest_runs(table, args.runs_root))
            how = ["--runs", str(args.runs)] if args.runs else ["--run"]  # what really ran
            command = " ".join(["python -m bnnbench.report", table, *how,
                                *(["--", *args.overrides] if args.overrides else [])])
            print("wrote", render(table, runs_dir, args.out, command))
    except (BnnbenchError, subprocess.CalledProcessError) as err:
        print(f"bnnbench.report: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

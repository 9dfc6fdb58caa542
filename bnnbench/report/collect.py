"""Find finished runs under directories and group them into table rows."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bnnbench.report.record import METRICS_FILE, RunRecord


def find_runs(roots: list[Path]) -> list[Path]:
    """Every directory below ``roots`` that holds a finished run (a metrics.json), sorted."""
    found: set[Path] = set()
    for root in roots:
        found.update(p.parent for p in Path(root).rglob(METRICS_FILE))
    return sorted(found)


def normalize_value(value: str) -> str:
    """'1e-2' and '0.01' name the same setting: numbers print in ``%g`` form."""
    try:
        return format(float(value), "g") if value.lower() not in ("true", "false") else value.lower()
    except ValueError:
        return value


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """{'method': 'bnn', 'optimizer.lr': '0.01', ...} from CLI overrides ('+' prefixes dropped)."""
    parsed = {}
    for item in overrides:
        key, _, value = item.partition("=")
        parsed[key.lstrip("+~")] = normalize_value(value)
    return parsed


def row_key(settings: dict[str, str], keys: list[str]) -> str:
    """The label of a table row: the varying settings, in sweep order ('k=v k=v')."""
    return " ".join(f"{k}={settings.get(k, '-')}" for k in keys)


@dataclass
class Row:
    """All seeds of one setting."""

    key: str
    records: list[RunRecord] = field(default_factory=list)

    def stat(self, name: str) -> tuple[float, float]:
        values = [float(getattr(r, name)) for r in self.records]
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return mean, std

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.records)


def group_rows(records: list[RunRecord], keys: list[str]) -> list[Row]:
    """Group runs by the values of ``keys`` (seeds of the same setting share a row)."""
    rows: dict[str, Row] = {}
    for record in records:
        settings = {"method": record.method, **parse_overrides(record.overrides)}
        key = row_key(settings, keys)
        rows.setdefault(key, Row(key)).records.append(record)
    return list(rows.values())


@dataclass(frozen=True)
class Published:
    top1: float | None
    top5: float | None
    tag: str
    setting: str


def load_published(path: Path, table: str) -> dict[str, Published]:
    """Printed paper numbers for ``table`` from reports/reference/published.csv, keyed by row."""
    def number(text: str) -> float | None:
        return float(text) if text.strip() else None

    with open(path, newline="") as handle:
        return {row["key"]: Published(number(row["top1"]), number(row["top5"]), row["tag"],
                                      row["setting"])
                for row in csv.DictReader(handle) if row["table"] == table}

"""Find runs under directories, read their resolved configs and outcomes, infer what was swept.

A run directory is one holding ``metrics.json`` (its outcome), ``run.json`` (the claim marker that
``bnnbench.rundir`` writes before training) or ``.hydra/config.yaml``; a staged recipe's
directory (``recipe.json``, ``+recipe=two_stage|fp_init|fp_teacher``) is not one, its ``stage1/``
and ``stage2/`` are, with the recipe directory's group choices (``model=``, ``optimizer=``) and
their own method. The settings a sweep varied are read from the runs' *resolved* configs
(``config_resolved.yaml``, else ``.hydra/config.yaml``) and compared as values:
``optimizer.lr=1e-2`` and ``optimizer.lr=0.01`` are one setting. Seeds are never a setting: they
are what a row aggregates, and neither are the run directories a run starts from or distils
from (``init=``, ``teacher=``: one per seed; a recipe's ``recipe.name`` says what they were).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnbench.errors import BnnbenchError
from bnnbench.files import read_yaml
from bnnbench.record import INT64_MAX, METRICS_FILE, RunRecord
from bnnbench.rundir import CONFIG_FILE, HYDRA_DIR, RECIPE_MARKER, RUN_MARKER, marker_is_locked

#: config groups whose *choice* (``model=nin``) is a setting, ``method`` first: it usually
#: determines the rest (its optimizer, schedule and knobs)
GROUPS = ("method", "model", "data", "trainer", "optimizer", "scheduler")
#: keys that never distinguish two settings: where a run logs, reads data from, resumes from
IGNORED_KEYS = {"seed", "ckpt_path", "data.root", "data.num_workers", "trainer.default_root_dir",
                "init", "teacher", "teacher_weights"}
# where a run writes and how it is labelled are not settings of the recipe
IGNORED_PREFIXES = ("logger", "hydra", "callbacks", "paths", "tags", "debug")
#: how a run ended; "unfinished": claimed (run.json / .hydra) but no metrics.json
STATUSES = ("finished", "diverged", "failed", "unfinished")
MISSING = "-"


def normalize_value(value: Any) -> str:
    """One spelling per value: numbers in ``%g`` form ('1e-2', 0.01 -> '0.01'), booleans lower."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return format(float(value), "g")
        except OverflowError:  # an int beyond float's range: its own digits
            return str(value)
    if value is None:
        return "null"
    if isinstance(value, str):
        if value.lower() in ("true", "false"):
            return value.lower()
        try:
            return format(float(value), "g")
        except (ValueError, OverflowError):
            return value
    return str(value)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """{'method': 'bnn', 'optimizer.lr': '0.01', ...} from CLI overrides ('+' prefixes dropped)."""
    parsed = {}
    for item in overrides:
        key, _, value = item.partition("=")
        parsed[key.lstrip("+~")] = normalize_value(value)
    return parsed


def row_key(settings: dict[str, str], keys: list[str]) -> str:
    """The label of a table row: the varying settings, in sweep order ('k=v k=v')."""
    return " ".join(f"{k}={settings.get(k, MISSING)}" for k in keys)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{'optimizer.lr': '0.001', ...}: the leaves of a plain config, values normalized."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list):
        return {prefix.rstrip("."): "[" + ", ".join(normalize_value(v) for v in tree) + "]"}
    return {prefix.rstrip("."): normalize_value(tree)}


@dataclass
class Run:
    """One run directory: what it was (config, group choices) and how it ended."""

    path: Path
    status: str
    error: str | None
    config: dict[str, str]
    choices: dict[str, str]
    overrides: list[str]
    record: RunRecord | None = None

    @property
    def seed(self) -> int | None:
        if self.record is not None:
            return self.record.seed
        try:  # an unfinished run's config: a seed the record bounds would have refused is none
            seed = int(float(self.config.get("seed", MISSING)))
        except (ValueError, OverflowError):  # missing, text, inf, nan
            return None
        return seed if 0 <= seed <= INT64_MAX else None

    def setting(self, key: str) -> str:
        """This run's value of a setting: a group choice ('method') or a dotted config key."""
        if key in GROUPS:
            return self.choices.get(key, MISSING)
        return self.config.get(key, MISSING)

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.record is not None \
            and self.record.test_top1 is not None


def _warn(message: str) -> None:
    print(f"bnnbench.report: warning: {message}", file=sys.stderr)


def _read_config(run_dir: Path) -> dict[str, str]:
    """The run's config as plain data, flattened; {} when it has none (or none that reads).

    Plain data: no OmegaConf resolver runs (``${oc.env:...}`` stays that text) and only a whole
    value that names another key (``${optimizer.lr}``) is looked up (:func:`resolve_references`);
    aliases, size and nesting are bounded (:func:`bnnbench.files.read_yaml`)."""
    for path in (run_dir / CONFIG_FILE, run_dir / HYDRA_DIR / "config.yaml"):
        if not path.is_file():
            continue
        try:
            tree = read_yaml(path)
            if not isinstance(tree, dict):
                raise BnnbenchError(f"{path} does not hold a mapping")
        except BnnbenchError as err:
            _warn(f"{err}; its run is grouped without its config")
            continue
        plain = {k: v for k, v in tree.items() if str(k) not in IGNORED_PREFIXES}
        return {key: resolve_references(value, tree) for key, value in flatten(plain).items()}
    return {}


#: a value that is exactly one interpolation of another key: ``${optimizer.lr}``
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w\-]*(?:\.[\w\-]+)*)\}")
#: references followed from one value (``a: ${b}``, ``b: ${c}``...); a cycle stops there too
MAX_REFERENCE_HOPS = 8


def resolve_references(value: str, tree: dict[str, Any]) -> str:
    """``value``, or when it is a reference to a plain value elsewhere in ``tree`` (an
    unresolved ``.hydra/config.yaml``), that value, normalized. Nothing else is interpolated:
    a resolver (``${oc.env:X}``), a reference inside other text, or one to a section stays as
    written, so a run directory can neither read the environment nor grow a string."""
    for _ in range(MAX_REFERENCE_HOPS):
        match = _REFERENCE.fullmatch(value)
        if match is None:
            return value
        node: Any = tree
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                return value
            node = node[part]
        if isinstance(node, (dict, list)):
            return value
        value = normalize_value(node)
    return value


def _read_hydra(run_dir: Path) -> tuple[dict[str, str], list[str]]:
    """(group choices, task overrides) from ``.hydra/``, as plain data; empty when absent."""
    choices: dict[str, str] = {}
    overrides: list[str] = []
    hydra_yaml = run_dir / HYDRA_DIR / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            picked = read_yaml(hydra_yaml)["hydra"]["runtime"]["choices"]
            choices = {g: str(picked[g]) for g in GROUPS
                       if isinstance(picked.get(g), (str, int, float))}
        except (BnnbenchError, TypeError, KeyError, AttributeError):  # then from metrics.json
            pass
    overrides_yaml = run_dir / HYDRA_DIR / "overrides.yaml"
    if overrides_yaml.is_file():
        try:
            listed = read_yaml(overrides_yaml)
            overrides = [str(o) for o in listed if isinstance(o, (str, int, float))] \
                if isinstance(listed, list) else []
        except BnnbenchError:
            pass
    return choices, overrides


def load_run(run_dir: Path) -> Run | None:
    """Read one run directory; ``None`` (with a warning naming the file) for a malformed
    metrics.json."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    choices, overrides = _read_hydra(run_dir)
    stage = not (run_dir / HYDRA_DIR).is_dir() and (run_dir.parent / RECIPE_MARKER).is_file()
    if stage:  # a recipe's stage: the command's choices, its own method (fp in stage 1 or not)
        choices, overrides = _read_hydra(run_dir.parent)
        choices.pop("method", None)
    metrics = run_dir / METRICS_FILE
    record = None
    if metrics.is_file():
        try:
            record = RunRecord.read(run_dir)
            if record.status not in STATUSES:
                raise ValueError(f"unknown status {record.status!r}")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            _warn(f"{metrics} is malformed ({type(err).__name__}: "
                  f"{str(err).splitlines()[0] if str(err) else 'no detail'}); skipped")
            return None
        status, error = record.status, record.error
        overrides = overrides or list(record.overrides)
        for group, value in (("method", record.method), ("model", record.model),
                             ("data", record.data)):
            choices.setdefault(group, value)
    else:
        status = "unfinished"
        error = ("no metrics.json: training right now" if marker_is_locked(run_dir / RUN_MARKER)
                 else "no metrics.json: stopped before the end (killed, crashed or refused)")
    choices.setdefault("method", "fp")  # no +method: the full-precision reference
    if status != "finished" and not error:
        error = f"{status} (no error line recorded)"
    return Run(run_dir, status, error, config, choices, overrides, record)


def find_runs(roots: Iterable[Path]) -> list[Path]:
    """Every run directory at or below ``roots`` (see the module docstring), sorted."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        for marker in (METRICS_FILE, RUN_MARKER, f"{HYDRA_DIR}/config.yaml"):
            found.update(p.parent if marker != f"{HYDRA_DIR}/config.yaml" else p.parent.parent
                         for p in root.rglob(marker))
    # a two-stage recipe's directory holds its stages' runs; it is one itself only when it
    # failed as a sweep point (metrics.json)
    return sorted(d for d in found
                  if not (d / RECIPE_MARKER).is_file() or (d / METRICS_FILE).is_file())


def load_runs(roots: Iterable[Path]) -> list[Run]:
    return [run for run in (load_run(d) for d in find_runs(roots)) if run is not None]


def _override_order(runs: list[Run]) -> list[str]:
    """Keys in the order the runs' overrides name them (a sweep's own order), first seen first."""
    order: list[str] = []
    for run in runs:
        for key in parse_overrides(run.overrides):
            if key not in order:
                order.append(key)
    return order


def swept_keys(runs: list[Run], preferred: list[str] | None = None) -> list[str]:
    """The settings that tell these runs apart, seeds aside.

    A candidate (a group choice, then each config key: ``preferred`` order first, then the
    order of the runs' overrides, then alphabetical) is a setting when it is *not determined*
    by the settings already chosen: two runs agree on those and differ on it. So ``method`` is a
    setting of a methods sweep but the optimizer each method brings is not, and a sweep of
    ``optimizer.lr`` x ``method.activation`` yields exactly those two keys.
    """
    all_keys = sorted({k for run in runs for k in run.config}
                      - IGNORED_KEYS - set(GROUPS))
    # a node's class (``method._target_``) is named by its group choice and its knobs
    all_keys = [k for k in all_keys if not k.startswith(IGNORED_PREFIXES)
                and not k.endswith("_target_")]
    order = [*(preferred or []), *GROUPS, *_override_order(runs), *all_keys]
    candidates = [k for i, k in enumerate(order) if k not in order[:i]
                  and k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)]
    chosen: list[str] = []
    for key in candidates:
        seen: dict[tuple[str, ...], str] = {}
        for run in runs:
            group = tuple(run.setting(k) for k in chosen)
            value = run.setting(key)
            if seen.setdefault(group, value) != value:
                chosen.append(key)
                break
    # a key chosen early (alphabetical order) may be determined by keys chosen after it: drop
    # it when the others still tell the same runs apart (fp_init's stage-1 method.activation
    # beside recipe.name); group choices and the sweep's own keys stay
    keep = {*(preferred or []), *GROUPS}
    for key in list(chosen):
        rest = [k for k in chosen if k != key]
        if key not in keep and _partition(runs, rest) == _partition(runs, chosen):
            chosen = rest
    return chosen or ["method"]


def _partition(runs: list[Run], keys: list[str]) -> set[frozenset[int]]:
    """The runs (by index) grouped by their values of ``keys``."""
    groups: dict[tuple[str, ...], set[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(tuple(run.setting(k) for k in keys), set()).add(i)
    return {frozenset(g) for g in groups.values()}


@dataclass
class Row:
    """All finished seeds of one setting (what the verdicts compare)."""

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


def group_rows(runs: list[Run], keys: list[str]) -> list[Row]:
    """Finished runs grouped by the values of ``keys`` (seeds of one setting share a row)."""
    rows: dict[str, Row] = {}
    for run in runs:
        key = row_key({k: run.setting(k) for k in keys}, keys)
        row = rows.setdefault(key, Row(key))
        if run.finished:
            row.records.append(run.record)  # type: ignore[arg-type]
    return [row for row in rows.values() if row.records]


@dataclass(frozen=True)
class Published:
    top1: float | None
    top5: float | None
    tag: str
    setting: str


def load_published(path: Path, table: str | None) -> dict[str, Published]:
    """Printed paper numbers for ``table`` from reports/reference/published.csv, keyed by row."""
    if table is None or not Path(path).is_file():
        return {}

    def number(text: str) -> float | None:
        return float(text) if text.strip() else None

    with open(path, newline="") as handle:
        return {row["key"]: Published(number(row["top1"]), number(row["top5"]), row["tag"],
                                      row["setting"])
                for row in csv.DictReader(handle) if row["table"] == table}

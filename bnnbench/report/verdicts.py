"""Verdicts on the papers' claims: does our table reproduce what the paper's table shows?

A claim compares two rows of a table ("PReLU beats ReLU at lr 1e-4"): ours is the difference of
the rows' mean test top-1 with its standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` over
seeds, the paper's is the difference of the published numbers. The verdict:

* **reproduced**: our difference has the paper's sign and exceeds two standard errors;
* **not reproduced**: it has the opposite sign and exceeds two standard errors;
* **inconclusive**: within two standard errors (noise at this scale), or fewer than 3 seeds a
  row (two samples give no usable standard deviation).

The verdict judges the direction only. Where the paper prints a number, a second column says
whether the *size* agrees (:func:`size_vs_paper`): "matches" when the paper's difference lies
within our ±2 standard errors, else smaller / larger with the ratio ours / paper, so a claim
whose direction is reproduced at a tenth of the paper's size says so ("-" while our direction
is itself within 2 standard errors).

The methods table also gets Spearman's rank correlation between our ordering of the methods
and the paper's (top-1, methods with a published number).

Two claims are not a difference of two rows' top-1, and get their own statistic under the same
rule:

* **a trend over a grid** (ABC-Net: "accuracy grows with M and with N", :data:`TRENDS`): per
  slice of the grid (the other count fixed), Spearman's rho of the cells' mean top-1 against the
  count (+1: it rises at every step; descriptive, 4 points give no test), and the *paired*
  per-seed difference between the slice's largest and smallest count (mean ± s.e. = sample std /
  sqrt(n) over the seeds both cells have). The claim's verdict pools the slices: per seed, the
  mean over slices of those largest-minus-smallest differences, then the rule above on its mean
  ± s.e. (seeds every slice has). ``null`` activation bases (full-precision activations) rank
  above every count.
* **sign flips** (Tang et al. 2017, Figure 2, :data:`FLIP_CLAIMS`): per run, ``log10`` of its
  flip share (:func:`bnnbench.report.flips.flip_share`: share of latent weights whose sign
  changes per step, mean over layers and epochs); ours is the difference of two rows' mean log10
  (orders of magnitude) ± its standard error. "Flips more" claims use the rule above; the claim
  that two settings are *close* is reproduced when the whole 2-standard-error interval lies
  within ±:data:`CLOSE_DECADES` order of magnitude, not reproduced when it lies wholly outside,
  inconclusive otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bnnbench.report.collect import MISSING, Published, Row
from bnnbench.report.flips import log10_share

#: seeds each row needs before a verdict is more than "inconclusive"
MIN_SEEDS = 3


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` (row keys of the table) in the paper; ``text`` says what."""

    text: str
    better: str
    worse: str


#: the recipes table's rows of ReActNet's binary networks, up to the recipe's name
RECIPE_ROW = "method=reactnet method.binary_weights=true recipe.name"

#: the published claims each table can test, keyed by table name
CLAIMS: dict[str, tuple[Claim, ...]] = {
    "tang_table2": (
        Claim("PReLU > ReLU at lr 1e-4", "optimizer.lr=0.0001 method.activation=prelu",
              "optimizer.lr=0.0001 method.activation=relu"),
        Claim("lr 1e-4 > lr 1e-2 (ReLU)", "optimizer.lr=0.0001 method.activation=relu",
              "optimizer.lr=0.01 method.activation=relu"),
        Claim("lr 1e-4 > lr 1e-2 (PReLU)", "optimizer.lr=0.0001 method.activation=prelu",
              "optimizer.lr=0.01 method.activation=prelu"),
    ),
    "tang_table3": (
        Claim("binary last layer: scale layer > none",
              "method.fp_last=false method.scale_layer=true",
              "method.fp_last=false method.scale_layer=false"),
        Claim("full-precision last layer > binary last layer (no scale)",
              "method.fp_last=true method.scale_layer=false",
              "method.fp_last=false method.scale_layer=false"),
    ),
    "tang_table5": (
        Claim("m = 2 > m = 1 residual binarizations", "method.activation_bits=2",
              "method.activation_bits=1"),
    ),
    # the papers' ImageNet orderings (ResNet-18, ReActNet's on ReActNet-A: the paper column
    # says which); tested on the modern table's one host
    "modern": (
        Claim("ReActNet > Bi-Real Net", "method=reactnet", "method=bireal"),
        Claim("Bi-Real Net > XNOR-Net", "method=bireal", "method=xnor"),
        Claim("XNOR-Net++ > XNOR-Net", "method=xnorpp", "method=xnor"),
        Claim("XNOR-Net > BNN", "method=xnor", "method=bnn"),
    ),
    # recipe ablation (conf/sweep/recipes.yaml): ReActNet trained plain vs with each recipe;
    # the rows are the recipes' binary stages (stage 1 rows stand beside them)
    "recipes": (
        Claim("+ KD > plain (ReActNet's distributional loss)",
              f"{RECIPE_ROW}=fp_teacher", f"{RECIPE_ROW}=-"),
        # Bi-Real's Table 1 compares clip vs ReLU pre-training (both warm starts), not a warm
        # start vs scratch; Real-to-Binary and ReActNet train in two steps without an ablation
        Claim("+ FP init > plain (Bi-Real Net's initialisation; no scratch arm printed)",
              f"{RECIPE_ROW}=fp_init", f"{RECIPE_ROW}=-"),
        Claim("two-stage > plain (ReActNet, Real-to-Binary; no one-stage arm printed)",
              f"{RECIPE_ROW}=two_stage", f"{RECIPE_ROW}=-"),
    ),
    "abcnet_grid": (
        Claim("more weight bases: M = 5 > M = 1 (N = 1)",
              "method.weight_bases=5 method.activation_bases=1",
              "method.weight_bases=1 method.activation_bases=1"),
        Claim("more weight bases: M = 5 > M = 3 (N = 5)",
              "method.weight_bases=5 method.activation_bases=5",
              "method.weight_bases=3 method.activation_bases=5"),
        Claim("more activation bases: N = 5 > N = 1 (M = 5)",
              "method.weight_bases=5 method.activation_bases=5",
              "method.weight_bases=5 method.activation_bases=1"),
        Claim("more activation bases: N = 3 > N = 1 (M = 3)",
              "method.weight_bases=3 method.activation_bases=3",
              "method.weight_bases=3 method.activation_bases=1"),
    ),
}


def has_claims(table: str | None) -> bool:
    """Whether ``table`` has claims of any kind (two rows' top-1, a trend, sign flips)."""
    return table in CLAIMS or table in TRENDS or table in FLIP_CLAIMS


def difference_of_means(xs: list[float], ys: list[float]) -> tuple[float, float, int]:
    """(mean(xs) - mean(ys), its standard error sqrt(s_x^2/n_x + s_y^2/n_y), smaller n); the
    standard error is NaN below 2 values a side."""
    diff = statistics.fmean(xs) - statistics.fmean(ys)
    n = min(len(xs), len(ys))
    if n < 2:
        return diff, math.nan, n
    return diff, math.sqrt(statistics.variance(xs) / len(xs)
                           + statistics.variance(ys) / len(ys)), n


def paired_mean(diffs: list[float]) -> tuple[float, float, int]:
    """(mean, its standard error std / sqrt(n), n) of paired per-seed differences."""
    if not diffs:
        return math.nan, math.nan, 0
    if len(diffs) < 2:
        return diffs[0], math.nan, 1
    return (statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)),
            len(diffs))


def difference(a: Row, b: Row) -> tuple[float, float, int]:
    """(mean_a - mean_b, its standard error, smallest seed count) of test top-1."""
    return difference_of_means([float(r.test_top1) for r in a.records],
                               [float(r.test_top1) for r in b.records])


def verdict(ours: float, se: float, paper: float | None, n: int = MIN_SEEDS) -> str:
    """reproduced / not reproduced / inconclusive, by the rule in the module docstring."""
    if math.isnan(se) or n < MIN_SEEDS:
        return f"inconclusive (fewer than {MIN_SEEDS} seeds)"
    sign = 1.0 if paper is None or paper >= 0 else -1.0  # no printed number: the claim's sign
    if abs(ours) <= 2 * se:
        return "inconclusive (within 2 standard errors)"
    return "reproduced" if ours * sign > 0 else "not reproduced"


def size_vs_paper(ours: float, se: float, paper: float | None, n: int = MIN_SEEDS) -> str:
    """Our difference's size against the paper's printed one (the verdict judges the sign):
    "matches" when ``paper`` lies within ``ours`` ± 2 s.e., else smaller / larger and the ratio;
    "-" without a printed number, a usable standard error or a resolved direction (``|ours|``
    within 2 s.e.: a wide interval would "match" any paper), "opposite sign" when the signs
    differ (the verdict says the rest)."""
    if paper is None or math.isnan(se) or n < MIN_SEEDS or abs(ours) <= 2 * se:
        return "-"
    if abs(ours - paper) <= 2 * se:
        return "matches (paper within 2 s.e.)"
    if ours * paper <= 0:
        return "opposite sign"
    return f"{'smaller' if abs(ours) < abs(paper) else 'larger'}: {ours / paper:.2g}x the paper's"


TOP1_INTRO = ("Ours: difference of mean test top-1 between the two rows, ± its standard error "
              "over seeds; reproduced / not reproduced when beyond 2 standard errors with the "
              "paper's sign / the opposite sign, inconclusive within or with fewer than "
              f"{MIN_SEEDS} seeds; size vs paper: the paper's difference within our ±2 s.e. "
              "(matches), else ours / paper (`bnnbench/report/verdicts.py`).")


def claim_lines(table: str, rows: list[Row], published: dict[str, Published]) -> list[str]:
    """The table's claims as markdown: each kind (two rows' top-1, a trend over a grid, sign
    flips) a paragraph saying how ours is computed, then a table with our number, the paper's and
    the verdict."""
    by_key = {row.key: row for row in rows}
    out = []
    for claim in CLAIMS.get(table, ()):
        a, b = by_key.get(claim.better), by_key.get(claim.worse)
        pa, pb = published.get(claim.better), published.get(claim.worse)
        paper = (pa.top1 - pb.top1 if pa and pb and pa.top1 is not None and pb.top1 is not None
                 else None)
        paper_txt = "-" if paper is None else f"{paper:+.1f}"
        if a is None or b is None:
            out.append(f"| {claim.text} | rows not in these runs | {paper_txt} | - | "
                       "not tested |")
            continue
        diff, se, n = difference(a, b)
        out.append(f"| {claim.text} | {_pm(diff, se, n)} | {paper_txt} | "
                   f"{size_vs_paper(diff, se, paper, n)} | {verdict(diff, se, paper, n)} |")
    if table == "methods":
        rho, n = rank_correlation(rows, published)
        if n >= 3:
            out.append(f"| ordering of the {n} methods with a published top-1 | Spearman rho = "
                       f"{rho:+.2f} between our and the paper's ordering | 1.00 | - | "
                       f"{'same direction' if rho > 0 else 'different'} (rank correlation) |")
    sections = []
    if out:
        sections += [TOP1_INTRO, "", "| claim (paper) | ours: top-1 difference ± s.e. (seeds) | "
                     "paper: difference | size vs paper | verdict |", "|---|---|---|---|---|",
                     *out]
    for lines in (trend_lines(table, rows, published), flip_lines(table, rows)):
        if lines:
            sections += ["", *lines] if sections else lines
    return sections


def _pm(value: float, se: float, n: int, digits: int = 2) -> str:
    """'+1.20 ± 0.30 (n = 3)'; no ± without a standard error."""
    return (f"{value:+.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")
            + f" (n = {n})")


# ---------------------------------------------------------------------------- grid trends
@dataclass(frozen=True)
class TrendClaim:
    """Accuracy grows with the setting ``along`` at every value of ``across`` (a grid's slices)."""

    text: str
    along: str
    across: str


TRENDS: dict[str, tuple[TrendClaim, ...]] = {
    "abcnet_grid": (
        TrendClaim("accuracy grows with M (weight bases), at every N", "method.weight_bases",
                   "method.activation_bases"),
        TrendClaim("accuracy grows with N (activation bases; null = full precision), at every M",
                   "method.activation_bases", "method.weight_bases"),
    ),
}
TREND_INTRO = (
    "Trends over the grid. Per slice (the other count fixed): Spearman's rho of the cells' mean "
    "top-1 against the count (+1: accuracy rises at every step; descriptive), and the paired "
    "per-seed difference of top-1 between the slice's largest and smallest count, mean ± s.e. "
    "(std / sqrt(n)) over the seeds both cells have. The claim's verdict pools the slices: per "
    "seed, the mean of the slices' largest-minus-smallest differences, under the rule above "
    f"(beyond 2 s.e. with / against the claim, inconclusive within or below {MIN_SEEDS} seeds). "
    "`null` activation bases (full-precision activations) rank above every count. The paper "
    "column applies the same statistics to its printed grid, whose slices have fewer cells.")


def _count(value: str) -> float:
    """A basis count as a number; ``null`` (full precision) above every count."""
    if value == "null":
        return math.inf
    try:
        return float(value)
    except ValueError:
        return math.nan


def parse_key(key: str) -> dict[str, str]:
    """{'method.weight_bases': '1', ...} from a row key 'k=v k=v' (values hold no spaces)."""
    return dict(part.partition("=")[::2] for part in key.split(" ") if part)


def _slices(cells: dict[str, float], claim: TrendClaim) -> dict[str, list[tuple[float, str]]]:
    """{across value: [(along count, row key), ...] ascending} over keys with both settings."""
    slices: dict[str, list[tuple[float, str]]] = {}
    for key in cells:
        setting = parse_key(key)
        across, along = setting.get(claim.across, MISSING), setting.get(claim.along, MISSING)
        if MISSING in (across, along) or math.isnan(_count(along)):
            continue
        slices.setdefault(across, []).append((_count(along), key))
    return {k: sorted(v) for k, v in sorted(slices.items(), key=lambda kv: _count(kv[0]))}


def _by_seed(row: Row) -> dict[int, float]:
    return {r.seed: float(r.test_top1) for r in row.records}


def trend_lines(table: str, rows: list[Row], published: dict[str, Published]) -> list[str]:
    """Markdown for the table's :data:`TRENDS`: one line per slice, one pooled line (verdict)."""
    claims = TRENDS.get(table, ())
    if not claims:
        return []
    by_key = {row.key: row for row in rows}
    means = {key: row.stat("test_top1")[0] for key, row in by_key.items()}
    printed = {key: p.top1 for key, p in published.items() if p.top1 is not None}
    out = []
    for claim in claims:
        ours, paper = _slices(means, claim), _slices(printed, claim)
        if not ours:
            out.append(f"| {claim.text} | - | rows not in these runs | - | - | - | not tested |")
            continue
        pooled: dict[int, list[float]] = {}
        paper_gaps = []
        for across, cells in ours.items():
            counts = [c for c, _ in cells]
            rho = spearman(counts, [means[k] for _, k in cells]) if len(cells) > 1 else math.nan
            low, high = by_key[cells[0][1]], by_key[cells[-1][1]]
            hi_seeds, lo_seeds = _by_seed(high), _by_seed(low)
            seeds = sorted(hi_seeds.keys() & lo_seeds.keys())
            diffs = [hi_seeds[s] - lo_seeds[s] for s in seeds] if len(cells) > 1 else []
            for s, d in zip(seeds, diffs):
                pooled.setdefault(s, []).append(d)
            mean, se, n = paired_mean(diffs)
            pcells = paper.get(across, [])
            prho = (spearman([c for c, _ in pcells], [printed[k] for _, k in pcells])
                    if len(pcells) > 1 else math.nan)
            pgap = printed[pcells[-1][1]] - printed[pcells[0][1]] if len(pcells) > 1 else None
            if pgap is not None:
                paper_gaps.append(pgap)
            span = f"{_along(claim, cells[0][1])} -> {_along(claim, cells[-1][1])}"
            out.append(
                f"| {claim.text} | {_short(claim.across)}={across} | {span} ({len(cells)} cells) "
                f"| {_rho(rho)} / {_rho(prho)} | {_pm(mean, se, n) if n else '-'} | "
                f"{'-' if pgap is None else f'{pgap:+.1f}'} | "
                f"{verdict(mean, se, None, n) if n else 'not tested (one cell)'} |")
        compared = sum(len(cells) > 1 for cells in ours.values())
        complete = sorted(s for s, ds in pooled.items() if len(ds) == compared)  # in every slice
        mean, se, n = paired_mean([statistics.fmean(pooled[s]) for s in complete])
        paper_mean = statistics.fmean(paper_gaps) if paper_gaps else None
        said = verdict(mean, se, None, n) if n else "inconclusive (no seed in every slice)"
        out.append(f"| **{claim.text}** | {compared} slices, pooled | | | "
                   f"{_pm(mean, se, n) if n else '-'} | "
                   f"{'-' if paper_mean is None else f'{paper_mean:+.1f}'} | **{said}** |")
    return [TREND_INTRO, "",
            "| claim | slice | cells | Spearman rho: ours / paper | largest - smallest count: "
            "top-1 ± s.e. (seeds) | paper | verdict |", "|---|---|---|---|---|---|---|", *out]


def _short(key: str) -> str:
    return {"method.weight_bases": "M", "method.activation_bases": "N"}.get(key, key)


def _along(claim: TrendClaim, key: str) -> str:
    return f"{_short(claim.along)}={parse_key(key)[claim.along]}"


def _rho(rho: float) -> str:
    return "-" if math.isnan(rho) else f"{rho:+.2f}"


# ---------------------------------------------------------------------------- sign flips
#: the ±margin, in orders of magnitude, inside which two flip shares count as "close"
CLOSE_DECADES = 1.0


@dataclass(frozen=True)
class FlipClaim:
    """Runs with settings ``more`` flip more latent signs than those with ``less`` (``close``:
    about as many); ``paper`` is what the paper says, quoted. Settings match a row whatever order
    its key names them in."""

    text: str
    more: tuple[tuple[str, str], ...]
    less: tuple[tuple[str, str], ...]
    paper: str
    close: bool = False
    #: the paper's difference in orders of magnitude where it states one ("nearly 3 orders")
    paper_decades: float | None = None


def _setting(method: str, lr: str) -> tuple[tuple[str, str], ...]:
    return (("method", method), ("optimizer.lr", lr))


#: Tang et al. 2017, Sec. "The learning rate" and Figure 2. BNN is the tang method in Table 2's
#: configuration (conf/sweep/tang_fig2_net/bnn.yaml), full precision the same host unbinarized.
FLIP_CLAIMS: dict[str, tuple[FlipClaim, ...]] = {
    "tang_fig2": (
        FlipClaim("at lr 1e-2, BNN flips far more signs than full precision",
                  _setting("tang", "0.01"), _setting("fp", "0.01"),
                  "≈ +3 (\"nearly 3 orders of magnitude larger\")", paper_decades=3.0),
        FlipClaim("BNN flips fewer signs at lr 1e-4 than at lr 1e-2",
                  _setting("tang", "0.01"), _setting("tang", "0.0001"),
                  "> 0 (\"a lower learning rate ... to avoid frequent sign changes\")"),
        FlipClaim("BNN at lr 1e-4 flips about as many signs as full precision at lr 1e-2",
                  _setting("tang", "0.0001"), _setting("fp", "0.01"),
                  "≈ 0 (\"only when the learning rate of BNN is lowered to 0.0001, the two "
                  "results become close\")", close=True),
    ),
}
FLIP_INTRO = (
    "Sign flips (Tang et al. 2017, Figure 2). Per run, its flip share: the share of latent weights "
    "whose sign changes at an optimizer step, averaged over the epoch's steps, the epochs and "
    "the weight layers (`bnnbench/report/flips.py`). Ours: difference of the two rows' mean "
    "log10 flip share (orders of magnitude; +3 = 1000x as many flips) ± its standard error over "
    "seeds. Flips more: reproduced / not reproduced beyond 2 s.e. with / against the claim, "
    f"inconclusive within or below {MIN_SEEDS} seeds. Close: reproduced when the whole "
    f"±2 s.e. interval lies within ±{CLOSE_DECADES:g} order of magnitude, not reproduced when it "
    "lies wholly outside, inconclusive otherwise. Size vs paper (where the paper gives a number "
    "of decades): the paper's within our ±2 s.e. (matches), else ours / paper.")


def close_verdict(ours: float, se: float, n: int, margin: float = CLOSE_DECADES) -> str:
    """Equivalence within ``margin``: the 2-s.e. interval inside / outside ±margin."""
    if math.isnan(se) or n < MIN_SEEDS:
        return f"inconclusive (fewer than {MIN_SEEDS} seeds)"
    if abs(ours) + 2 * se < margin:
        return "reproduced"
    if abs(ours) - 2 * se > margin:
        return "not reproduced"
    return f"inconclusive (2 standard errors reach ±{margin:g} order of magnitude)"


def flip_lines(table: str, rows: list[Row]) -> list[str]:
    """Markdown for the table's :data:`FLIP_CLAIMS`."""
    claims = FLIP_CLAIMS.get(table, ())
    if not claims:
        return []
    def find(settings: tuple[tuple[str, str], ...]) -> Row | None:
        found = [row for row in rows if set(settings) <= set(parse_key(row.key).items())]
        return found[0] if len(found) == 1 else None

    out = []
    for claim in claims:
        a, b = find(claim.more), find(claim.less)
        if a is None or b is None:
            out.append(f"| {claim.text} | rows not in these runs | {claim.paper} | - | "
                       "not tested |")
            continue
        xs = [log10_share(r.curves) for r in a.records]
        ys = [log10_share(r.curves) for r in b.records]
        if None in xs or None in ys:
            out.append(f"| {claim.text} | runs without flip curves (run with "
                       f"callbacks=flip_ratio) | {claim.paper} | - | not tested |")
            continue
        if not all(math.isfinite(v) for v in [*xs, *ys]):
            out.append(f"| {claim.text} | a run flipped no sign (log10 of 0) | {claim.paper} | - | "
                       "inconclusive (no flip to compare) |")
            continue
        diff, se, n = difference_of_means(xs, ys)  # type: ignore[arg-type]
        said = (close_verdict(diff, se, n) if claim.close else verdict(diff, se, None, n))
        size = size_vs_paper(diff, se, claim.paper_decades, n)
        out.append(f"| {claim.text} | {_pm(diff, se, n)} ({_times(diff)}) | {claim.paper} | "
                   f"{size} | {said} |")
    return [FLIP_INTRO, "",
            "| claim (Tang et al. 2017, Fig. 2) | ours: log10 flip-share difference ± s.e. "
            "(seeds) | paper | size vs paper | verdict |", "|---|---|---|---|---|", *out]


def _times(decades: float) -> str:
    """'1200x as many' / '0.03x as many' for a log10 ratio."""
    return f"{10 ** decades:.3g}x as many"


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else math.nan


def rank_correlation(rows: list[Row], published: dict[str, Published]) -> tuple[float, int]:
    """Spearman's rho between our mean top-1 and the paper's, over rows with a paper top-1
    (BinaryConnect's MNIST figure is not on the ImageNet scale of the others: left out)."""
    pairs = [(row.stat("test_top1")[0], published[row.key].top1) for row in rows
             if row.key in published and published[row.key].top1 is not None
             and "ImageNet" in published[row.key].setting]
    if len(pairs) < 3:
        return math.nan, len(pairs)
    return spearman([p[0] for p in pairs], [p[1] for p in pairs]), len(pairs)

"""Verdicts on the papers' claims: does our table reproduce what the paper's table shows?

A claim compares two rows of a table ("PReLU beats ReLU at lr 1e-4"): ours is the difference of
the rows' mean test top-1 with its standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` over
seeds, the paper's is the difference of the published numbers. The verdict:

* **reproduced**: our difference has the paper's sign and exceeds two standard errors;
* **not reproduced**: it has the opposite sign and exceeds two standard errors;
* **inconclusive**: within two standard errors (noise at this scale), or fewer than 3 seeds a
  row (two samples give no usable standard deviation).

The methods table also gets Spearman's rank correlation between our ordering of the methods
and the paper's (top-1, methods with a published number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bnnbench.report.collect import Published, Row

#: seeds each row needs before a verdict is more than "inconclusive"
MIN_SEEDS = 3


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` (row keys of the table) in the paper; ``text`` says what."""

    text: str
    better: str
    worse: str


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


def difference(a: Row, b: Row) -> tuple[float, float, int]:
    """(mean_a - mean_b, its standard error, smallest seed count) of test top-1."""
    (ma, sa), (mb, sb) = a.stat("test_top1"), b.stat("test_top1")
    n = min(len(a.records), len(b.records))
    if n < 2 or math.isnan(sa) or math.isnan(sb):
        return ma - mb, math.nan, n
    return ma - mb, math.sqrt(sa**2 / len(a.records) + sb**2 / len(b.records)), n


def verdict(ours: float, se: float, paper: float | None, n: int = MIN_SEEDS) -> str:
    """reproduced / not reproduced / inconclusive, by the rule in the module docstring."""
    if math.isnan(se) or n < MIN_SEEDS:
        return f"inconclusive (fewer than {MIN_SEEDS} seeds)"
    sign = 1.0 if paper is None or paper >= 0 else -1.0  # no printed number: the claim's sign
    if abs(ours) <= 2 * se:
        return "inconclusive (within 2 standard errors)"
    return "reproduced" if ours * sign > 0 else "not reproduced"


def claim_lines(table: str, rows: list[Row], published: dict[str, Published]) -> list[str]:
    """A markdown table of the table's claims with our difference, the paper's and the verdict."""
    by_key = {row.key: row for row in rows}
    out = []
    for claim in CLAIMS.get(table, ()):
        a, b = by_key.get(claim.better), by_key.get(claim.worse)
        pa, pb = published.get(claim.better), published.get(claim.worse)
        paper = (pa.top1 - pb.top1 if pa and pb and pa.top1 is not None and pb.top1 is not None
                 else None)
        paper_txt = "-" if paper is None else f"{paper:+.1f}"
        if a is None or b is None:
            out.append(f"| {claim.text} | rows not in these runs | {paper_txt} | not tested |")
            continue
        diff, se, n = difference(a, b)
        ours = f"{diff:+.2f}" + ("" if math.isnan(se) else f" ± {se:.2f}") + f" (n = {n})"
        out.append(f"| {claim.text} | {ours} | {paper_txt} | {verdict(diff, se, paper, n)} |")
    if table == "methods":
        rho, n = rank_correlation(rows, published)
        if n >= 3:
            out.append(f"| ordering of the {n} methods with a published top-1 | Spearman rho = "
                       f"{rho:+.2f} between our and the paper's ordering | 1.00 | "
                       f"{'same direction' if rho > 0 else 'different'} (rank correlation) |")
    if not out:
        return []
    return ["| claim (paper) | ours: top-1 difference ± s.e. (seeds) | paper: difference | "
            "verdict |", "|---|---|---|---|", *out]


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

"""Verdicts on the papers' claims: the statistics and the rule, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from bnnbench.report.collect import Published, Row
from bnnbench.record import RunRecord
from bnnbench.report.verdicts import claim_lines, close_verdict, difference, rank_correlation, \
    size_vs_paper, spearman, verdict


def _row(key: str, top1s: list[float]) -> Row:
    row = Row(key)
    for seed, top1 in enumerate(top1s):
        row.records.append(RunRecord(method="tang", model="mlp", data="mnist5k", seed=seed,
                                     test_top1=top1, test_top5=99.0, best_val_top1=top1,
                                     num_params=1, epochs=1, wall_time_s=1.0, epoch_time_s=[1.0],
                                     curves={}, config_hash="h", git_commit="c", device="cpu"))
    return row


def test_difference_and_standard_error():
    a, b = _row("a", [80.0, 82.0, 84.0]), _row("b", [70.0, 71.0, 72.0])
    diff, se, n = difference(a, b)
    # means 82 and 71; sample variances 4 and 1: se = sqrt(4/3 + 1/3)
    assert diff == pytest.approx(11.0) and se == pytest.approx(math.sqrt(5 / 3)) and n == 3


@pytest.mark.parametrize("ours,se,paper,expected", [
    (5.0, 1.0, 4.8, "reproduced"),
    (-5.0, 1.0, 4.8, "not reproduced"),
    (1.5, 1.0, 4.8, "inconclusive (within 2 standard errors)"),
    (-5.0, 1.0, -2.0, "reproduced"),           # the paper's own sign counts
    (5.0, 1.0, None, "reproduced"),            # no printed number: the claim's direction
    (5.0, math.nan, 4.8, "inconclusive (fewer than 3 seeds)"),
])
def test_verdict_rule(ours, se, paper, expected):
    assert verdict(ours, se, paper) == expected


@pytest.mark.parametrize("ours,se,paper,expected", [
    (5.0, 1.0, 4.8, "matches (paper within 2 s.e.)"),
    (5.0, 1.0, 7.0, "matches (paper within 2 s.e.)"),      # |5 - 7| = 2 s.e. exactly
    (5.0, 1.0, 7.1, "smaller: 0.7x the paper's"),
    (0.26, 0.01, 3.0, "smaller: 0.087x the paper's"),     # Fig. 2: 0.26 vs ~3 decades
    (-12.0, 1.0, -4.0, "larger: 3x the paper's"),
    (-5.0, 1.0, 4.8, "opposite sign"),
    (5.0, 1.0, None, "-"),                                # no printed number
    (-1.5, 1.0, 0.5, "-"),          # direction unresolved: a wide interval "matches" anything
    (5.0, math.nan, 4.8, "-"),
])
def test_size_vs_paper_rule(ours, se, paper, expected):
    assert size_vs_paper(ours, se, paper) == expected
    assert size_vs_paper(ours, se, paper, n=2) == "-"


def test_two_seeds_give_no_verdict():
    assert verdict(50.0, 1.0, 4.8, n=2) == "inconclusive (fewer than 3 seeds)"
    assert verdict(50.0, 1.0, 4.8, n=3) == "reproduced"


def test_spearman_against_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4): Pearson of the ranks
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)


def test_claim_table_for_tang_table5():
    rows = [_row("method.activation_bits=1", [60.0, 61.0, 62.0]),
            _row("method.activation_bits=2", [70.0, 71.0, 72.0])]
    published = {"method.activation_bits=1": Published(39.3, 64.6, "seed", "x"),
                 "method.activation_bits=2": Published(45.8, 70.4, "seed", "x")}
    lines = claim_lines("tang_table5", rows, published)
    assert lines[0].startswith("Ours: difference of mean test top-1")
    # paper +6.5 lies outside 10.00 ± 2 x 0.82: larger, 10 / 6.5 = 1.5x
    assert lines[4] == ("| m = 2 > m = 1 residual binarizations | +10.00 ± 0.82 (n = 3) | +6.5 | "
                        "larger: 1.5x the paper's | reproduced |")


def test_missing_rows_are_said_not_silently_dropped():
    lines = claim_lines("tang_table5", [_row("method.activation_bits=1", [60.0, 61.0])], {})
    assert lines[4].endswith("| rows not in these runs | - | - | not tested |")


def test_methods_rank_correlation_leaves_out_non_imagenet_numbers():
    rows = [_row("method=fp", [90.0, 91.0]), _row("method=bnn", [80.0, 81.0]),
            _row("method=xnor", [85.0, 86.0]), _row("method=binaryconnect", [10.0, 11.0])]
    published = {"method=fp": Published(69.3, None, "seed", "ImageNet ResNet-18"),
                 "method=bnn": Published(42.2, None, "seed", "ImageNet ResNet-18"),
                 "method=xnor": Published(51.2, None, "seed", "ImageNet ResNet-18"),
                 "method=binaryconnect": Published(98.71, None, "seed", "MNIST error")}
    rho, n = rank_correlation(rows, published)
    assert n == 3 and rho == pytest.approx(1.0)
    assert "Spearman rho = +1.00" in claim_lines("methods", rows, published)[-1]


# ------------------------------------------------------------------ ABC-Net: trends over a grid
GRID_M = ("1", "2", "3", "5")
GRID_N = ("1", "3", "5", "null")


def _grid(top1: dict[tuple[str, str], list[float]]) -> list[Row]:
    return [_row(f"method.weight_bases={m} method.activation_bases={n}", values)
            for (m, n), values in top1.items()]


def _trend_rows(lines: list[str]) -> dict[str, str]:
    """{claim's first words: pooled verdict} from the trend table's bold pooled lines."""
    pooled = [line for line in lines if "pooled" in line]
    return {line.split("|")[1].strip(" *").split(" (")[0].split(",")[0]:
            line.rstrip(" |").split("|")[-1].strip(" *") for line in pooled}


# A seed that is good in one cell is good in all (SEED_SHIFT: cancels in paired differences, not
# in a row's std); jitter(i, j, s) = 0.1 w_s (i - j) makes the paired differences of a slice's
# extremes 0.3 w_s along M and -0.3 w_s along N: a spread of 0.3, whatever the trend.
SEED_SHIFT = [0.0, 1.5, -1.0]
W = [1.0, -1.0, 0.5]


def jitter(i: int, j: int, s: int) -> float:
    return 0.1 * W[s] * (i - j)


def _cells(mean_of) -> dict[tuple[str, str], list[float]]:
    return {(m, n): [mean_of(i, j) + SEED_SHIFT[s] + jitter(i, j, s) for s in range(3)]
            for i, m in enumerate(GRID_M) for j, n in enumerate(GRID_N)}


@pytest.mark.parametrize("name, mean_of, expected_m, expected_n", [
    ("monotone", lambda i, j: 80 + 2 * i + 3 * j, "reproduced", "reproduced"),
    ("flat", lambda i, j: 90.0, "inconclusive (within 2 standard errors)",
     "inconclusive (within 2 standard errors)"),
    ("reversed", lambda i, j: 90 - 2 * i - 3 * j, "not reproduced", "not reproduced"),
    ("M only", lambda i, j: 80 + 2 * i, "reproduced", "inconclusive (within 2 standard errors)"),
])
def test_grid_trend_verdicts(name, mean_of, expected_m, expected_n):
    lines = claim_lines("abcnet_grid", _grid(_cells(mean_of)), {})
    verdicts = _trend_rows(lines)
    assert verdicts == {"accuracy grows with M": expected_m, "accuracy grows with N": expected_n}


def test_grid_trend_statistics_by_hand():
    """Spearman per slice and the paired extremes, against values worked out by hand."""
    cells = _cells(lambda i, j: 80 + 2 * i + 3 * j)
    # M = 2 below M = 1 at N = 1 (a non-monotone slice): rho over M = 1, 2, 3, 5 with cell means
    # 82 - 1, 80, 84, 86 (+ the same seed-mean shift): ranks (2, 1, 3, 4) vs (1, 2, 3, 4): rho 0.8
    cells["2", "1"] = [v - 3.0 for v in cells["2", "1"]]
    lines = claim_lines("abcnet_grid", _grid(cells), {})
    line = next(line for line in lines if line.startswith("| accuracy grows with M")
                and "| N=1 |" in line)
    assert "| M=1 -> M=5 (4 cells) | +0.80 / - |" in line
    # M = 5 - M = 1 at N = 1, per seed: 6 + jitter difference; mean and s.e. of those 3 values
    diffs = [6 + jitter(3, 0, s) - jitter(0, 0, s) for s in range(3)]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3)
    assert f"| {mean:+.2f} ± {se:.2f} (n = 3) |" in line
    # the published grid gets the same statistics: N = 1 has M = 1, 3, 5 printed
    published = {"method.weight_bases=1 method.activation_bases=1": Published(42.7, None, "", ""),
                 "method.weight_bases=3 method.activation_bases=1": Published(49.1, None, "", ""),
                 "method.weight_bases=5 method.activation_bases=1": Published(54.1, None, "", "")}
    lines = claim_lines("abcnet_grid", _grid(cells), published)
    line = next(line for line in lines if line.startswith("| accuracy grows with M")
                and "| N=1 |" in line)
    assert "| +0.80 / +1.00 |" in line and "| +11.4 |" in line


def test_grid_trend_needs_three_seeds():
    cells = {k: v[:2] for k, v in _cells(lambda i, j: 80 + 2 * i + 3 * j).items()}
    assert set(_trend_rows(claim_lines("abcnet_grid", _grid(cells), {})).values()) == {
        "inconclusive (fewer than 3 seeds)"}


# ------------------------------------------------------------------ Tang et al. Figure 2: flips
def _flip_row(key: str, shares: list[float]) -> Row:
    """Seeds whose two layers flip ``share`` and ``share / 10`` per step in both epochs."""
    row = _row(key, [90.0] * len(shares))
    for record, share in zip(row.records, shares):
        record.curves = {"flip_ratio/net.0": [share, share], "flip_ratio/net.3": [share / 10] * 2}
    return row


def _flip_verdicts(shares: dict[str, list[float]]) -> list[str]:
    rows = [_flip_row(key, values) for key, values in shares.items()]
    lines = claim_lines("tang_fig2", rows, {})
    return [line.rstrip(" |").split("|")[-1].strip() for line in lines
            if line.startswith("| ") and "(n = " in line]


# row keys as the tang_fig2 sweep names them (its BNN is the tang method, Table 2's configuration)
BNN2, BNN4, FP2 = ("optimizer.lr=0.01 method=tang", "optimizer.lr=0.0001 method=tang",
                   "optimizer.lr=0.01 method=fp")


@pytest.mark.parametrize("bnn2, bnn4, fp2, expected", [
    # the paper's picture: BNN at 1e-2 ~1000x full precision, BNN at 1e-4 close to it
    ([0.1, 0.12, 0.09], [2e-4, 3e-4, 2.5e-4], [1e-4, 1.1e-4, 0.9e-4],
     ["reproduced", "reproduced", "reproduced"]),
    # the opposite: full precision flips more, lowering BNN's lr changes nothing, 100x apart
    ([1e-4, 1.1e-4, 0.9e-4], [1e-4, 1.2e-4, 0.8e-4], [1e-2, 1.1e-2, 0.9e-2],
     ["not reproduced", "inconclusive (within 2 standard errors)", "not reproduced"]),
    # seeds scattered over decades: nothing can be said
    ([1e-1, 1e-4, 1e-2], [1e-2, 1e-5, 1e-1], [1e-3, 1e-1, 1e-5],
     ["inconclusive (within 2 standard errors)", "inconclusive (within 2 standard errors)",
      "inconclusive (2 standard errors reach ±1 order of magnitude)"]),
])
def test_flip_claim_verdicts(bnn2, bnn4, fp2, expected):
    assert _flip_verdicts({BNN2: bnn2, BNN4: bnn4, FP2: fp2}) == expected


def test_flip_claim_statistic_by_hand():
    """Our number is the difference of mean log10 flip shares: the share is the mean over the
    layers (share and share / 10 -> 0.55 share) and epochs."""
    bnn2, fp2 = [0.1, 0.2, 0.4], [1e-4, 1e-4, 2e-4]
    lines = claim_lines("tang_fig2", [_flip_row(BNN2, bnn2), _flip_row(FP2, fp2),
                                      _flip_row(BNN4, fp2)], {})
    a = [math.log10(0.55 * s) for s in bnn2]
    b = [math.log10(0.55 * s) for s in fp2]
    diff = sum(a) / 3 - sum(b) / 3
    var = lambda xs: sum((x - sum(xs) / 3) ** 2 for x in xs) / 2  # noqa: E731
    se = math.sqrt(var(a) / 3 + var(b) / 3)
    line = next(line for line in lines if line.startswith("| at lr 1e-2"))
    assert f"| {diff:+.2f} ± {se:.2f} (n = 3) ({10 ** diff:.3g}x as many) |" in line
    assert "nearly 3 orders of magnitude" in line
    # the paper's ~3 decades lie within ours ± 2 s.e. (+3.20 ± 0.20)
    assert abs(diff - 3) <= 2 * se and "| matches (paper within 2 s.e.) | reproduced |" in line


def test_flip_claims_without_flip_curves_are_not_tested():
    rows = [_row(BNN2, [90.0] * 3), _row(FP2, [90.0] * 3)]
    lines = claim_lines("tang_fig2", rows, {})
    assert "callbacks=flip_ratio" in next(line for line in lines if line.startswith("| at lr"))
    assert lines[-1].endswith("| rows not in these runs | ≈ 0 (\"only when the learning rate of "
                              "BNN is lowered to 0.0001, the two results become close\") | - | "
                              "not tested |")


@pytest.mark.parametrize("ours, se, expected", [
    (0.3, 0.2, "reproduced"),          # 0.3 + 0.4 < 1
    (-0.3, 0.2, "reproduced"),
    (0.3, 0.4, "inconclusive (2 standard errors reach ±1 order of magnitude)"),
    (2.0, 0.4, "not reproduced"),      # 2.0 - 0.8 > 1
    (-2.0, 0.6, "inconclusive (2 standard errors reach ±1 order of magnitude)"),
])
def test_close_verdict_rule(ours, se, expected):
    assert close_verdict(ours, se, 3) == expected
    assert close_verdict(ours, se, 2) == "inconclusive (fewer than 3 seeds)"

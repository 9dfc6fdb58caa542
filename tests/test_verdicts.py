"""Verdicts on the papers' claims: the statistics and the rule, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from bnnbench.report.collect import Published, Row
from bnnbench.report.record import RunRecord
from bnnbench.report.verdicts import claim_lines, difference, rank_correlation, spearman, verdict


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
    assert lines[2] == ("| m = 2 > m = 1 residual binarizations | +10.00 ± 0.82 (n = 3) | +6.5 | "
                        "reproduced |")


def test_missing_rows_are_said_not_silently_dropped():
    lines = claim_lines("tang_table5", [_row("method.activation_bits=1", [60.0, 61.0])], {})
    assert lines[2].endswith("| rows not in these runs | - | not tested |")


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

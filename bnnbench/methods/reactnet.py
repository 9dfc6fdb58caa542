"""ReActNet (Liu, Shen, Savvides, Cheng, ECCV 2020).

"ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions",
arXiv:2003.03488. Authors' code: github.com/liuzechun/ReActNet (``resnet/{1_step1,2_step2}/
birealnet.py`` for the ResNet-18 variant, ``mobilenet/*/reactnet.py`` for ReActNet-A,
``utils/KD_loss.py`` for the distributional loss).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bnnbench.methods.base import register_method
from bnnbench.methods.bireal import _UnitMethod
from bnnbench.nn.layers import quantized_layers
from bnnbench.nn.modern_layers import LearnableShift, RPReLU


@register_method
class ReActNet(_UnitMethod):
    """ReActNet: Bi-Real units with RSign and RPReLU, learnable per-channel shifts (Liu et al.
    2020), on any host: ``model=reactnet_a`` is ReActNet-A (the paper's MobileNet-V1-based
    network, :class:`~bnnbench.models.reactnet_a.ReActNetA`), ``model=resnet18`` the "ReActNet
    ResNet-18" variant.

    Unit (the authors' ``BasicBlock``, resnet/2_step2/birealnet.py):
    ``y = RPReLU(BN(conv(RSign(x), W_b)) + shortcut(x))``, the same units and shortcuts as
    :class:`~bnnbench.methods.bireal.BiRealNet` (the shortcut carries the unshifted ``x``).
    On ``model=reactnet_a`` each block (:class:`~bnnbench.nn.modern_layers.ReActNetABlock`,
    the authors' mobilenet ``BasicBlock``) is two such units: the binary 3x3 conv
    (``C -> C``, AvgPool shortcut at stride 2) then the binary 1x1 conv (``C -> C``, or
    ``C -> 2C`` with the shortcut duplicated: the authors' two concatenated 1x1 convs); the
    real stem conv (no activation) and the real fc stay.
    RSign (Eq. 2): ``sign(x - alpha_c)``, stored as a :class:`~bnnbench.nn.modern_layers.
    LearnableShift` ``b = -alpha`` (init 0) in front of the layer's sign (the authors' ``move0``);
    backward ApproxSign (the authors' ``BinaryActivation``), so ``dL/db_c = sum over channel c of
    g * max(0, 2 - 2|x + b_c|)``. RPReLU (Eq. 3): ``beta_c (x - gamma_c) + zeta_c`` below
    ``gamma_c``, ``x - gamma_c + zeta_c`` above (:class:`~bnnbench.nn.modern_layers.RPReLU`;
    PReLU slope init 0.25, shifts 0). No ReLU anywhere.
    Weights: ``alpha_o sign(W)``, gradient ``weight_gradient=code`` by default, the authors'
    ``g * 1{|W| <= 1}`` (``paper``: Bi-Real's ``g * alpha_o 1{|W| < 1}``).
    Two-step training (Sec. 4.1): step 1 ``binary_weights=false`` (binary activations, real
    weights, weight decay 1e-5), step 2 ``binary_weights=true`` initialised from step 1 (weight
    decay 0), every tensor (as the paper and resnet/2_step2; the authors' mobilenet/2_step2
    skips the binary convs' step-1 weights, whose parameter name and shape changed). Weight
    decay applies to conv weights, binary layers' weights and the learnable shifts (the
    authors' 4-D tensors), everything else (BN, RPReLU slopes, the real classifier) has none
    (:meth:`param_groups`, the authors' two Adam groups). The distributional loss (KL to a real
    teacher's softmax, T = 1) is the knowledge-distillation recipe, not part of this method.
    Adam lr 5e-4 to 2.5e-3, linear decay.
    Reproduces: ReActNet-A 69.4 / 88.6 top-1 / top-5 on ImageNet (``model=reactnet_a``,
    Table 4); ReActNet ResNet-18 65.5 top-1 (``model=resnet18``).
    """

    name = "reactnet"
    paper = "Liu et al. 2020"
    binarizes = "weights (sign x per-filter mean|W|) and activations (RSign, learned shifts)"
    default_gradient = "code"

    def convert(self, model: nn.Module) -> nn.Module:
        return self._convert(model, LearnableShift, RPReLU)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Two groups, the authors' (resnet/ and mobilenet/ ``train.py``: ``p.ndimension() == 4
        or 'conv' in pname`` -> the group with ``--weight_decay``, the rest none): their 4-D
        tensors are the conv kernels and the ``LearnableBias`` shifts (``1 x C x 1 x 1``), so
        the decayed group holds every conv weight, the binary layers' weights and every
        learnable shift (RSign's, RPReLU's two); BatchNorm, RPReLU's slopes (their ``nn.PReLU``)
        and the real classifier have none."""
        decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
        decayed |= {id(layer.weight) for _, layer in quantized_layers(model)}
        decayed |= {id(m.shift) for m in model.modules() if isinstance(m, LearnableShift)}
        decayed |= {id(p) for m in model.modules() if isinstance(m, RPReLU)
                    for p in (m.shift_in, m.shift_out)}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
                  {"params": [p for p in params if id(p) in decayed]}]
        return [g for g in groups if g["params"]]

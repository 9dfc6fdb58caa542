"""CUDA-graph replay of a packed model (``load_packed(..., cuda_graph=True)``).

A packed network is many small kernel launches with Python between them; capturing its forward
once per input shape and replaying it removes the Python and launch overhead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnnbench.errors import BnnbenchError

GraphRun = Callable[[Tensor], Tensor]


def capture_cuda_graph(net: nn.Module, example: Tensor, warmup: int = 3) -> GraphRun:
    """Capture ``net(example)`` as a CUDA graph; returns ``run(x)``: copy x into the graph's
    input, replay, return a copy of its output (the next replay overwrites the graph's own).

    The warm-up calls run first on a side stream (as ``torch.cuda.graphs`` asks): Triton's
    autotuning, which launches and synchronizes, must not happen during the capture.
    """
    if example.device.type != "cuda":
        raise BnnbenchError(f"a CUDA graph needs CUDA inputs, got a tensor on {example.device}; "
                            "move the input to the model's GPU")
    static_in = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            net(static_in)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = net(static_in)

    def run(x: Tensor) -> Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    return run


class CudaGraphed(nn.Module):
    """A model whose forward replays a CUDA graph captured once per input shape (and dtype and
    device): the first call with a new shape captures (:func:`capture_cuda_graph`), later calls
    with that shape replay. Inference only (no autograd through the replay). Moving or casting
    the model (``.to``, ``.half``...) drops the captured graphs, since they hold the old tensors.
    ``capture`` replaces the capture function (tests use a fake that needs no GPU).
    """

    def __init__(self, net: nn.Module,
                 capture: Callable[[nn.Module, Tensor], GraphRun] = capture_cuda_graph) -> None:
        super().__init__()
        self.net = net
        self.capture = capture
        self.graphs: dict[tuple, GraphRun] = {}
        self.train(net.training)

    def forward(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        run = self.graphs.get(key)
        if run is None:
            run = self.graphs[key] = self.capture(self.net, x)
        return run(x)

    def _apply(self, fn, *args, **kwargs):  # .to() / .half() / .cuda(): the graphs are stale
        self.graphs.clear()
        return super()._apply(fn, *args, **kwargs)

"""``load_packed(..., cuda_graph=True)``: one captured CUDA graph per input shape, replayed.

The capture itself needs a GPU (the last test, skipped without one); the refusal on CPU and the
per-shape cache are tested with a fake capture that records what it was asked for.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnbench.errors import BnnbenchError
from bnnbench.packed.cuda_graph import CudaGraphed, capture_cuda_graph
from bnnbench.packed.format import load_packed


def test_cuda_graph_on_cpu_is_refused_in_one_line(tmp_path):
    with pytest.raises(BnnbenchError, match=r"cuda_graph=True needs device='cuda'") as err:
        load_packed(tmp_path / "packed.safetensors", device="cpu", cuda_graph=True)
    assert "\n" not in str(err.value)


def test_capturing_cpu_inputs_is_refused_in_one_line():
    with pytest.raises(BnnbenchError, match="needs CUDA inputs") as err:
        capture_cuda_graph(nn.Linear(4, 3), torch.randn(2, 4))
    assert "\n" not in str(err.value)


class FakeCapture:
    """Stands in for :func:`capture_cuda_graph`: counts captures; each returned run refuses an
    input of another shape or dtype than the one it was captured for (a real graph would
    silently compute garbage on it)."""

    def __init__(self) -> None:
        self.captured: list[tuple] = []

    def __call__(self, net, example):
        key = (tuple(example.shape), example.dtype)
        self.captured.append(key)

        def run(x):
            assert (tuple(x.shape), x.dtype) == key, f"graph for {key} replayed on {x.shape}"
            with torch.no_grad():
                return net(x) + 0.0  # a copy, as the real run returns

        return run


def test_one_capture_per_input_shape_then_replays():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    fake = FakeCapture()
    graphed = CudaGraphed(net, capture=fake)
    assert not graphed.training  # follows the wrapped model's mode
    shapes = [(2, 6), (2, 6), (7, 6), (2, 6), (7, 6), (1, 6)]
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.equal(graphed(x), net(x))
    assert fake.captured == [((2, 6), torch.float32), ((7, 6), torch.float32),
                             ((1, 6), torch.float32)]


def test_casting_the_model_drops_its_graphs():
    net = nn.Linear(4, 2).eval()
    fake = FakeCapture()
    graphed = CudaGraphed(net, capture=fake)
    graphed(torch.randn(3, 4))
    graphed = graphed.double()  # the captured graph holds float32 tensors: stale
    assert graphed.graphs == {}
    y = graphed(torch.randn(3, 4, dtype=torch.float64))
    assert y.dtype == torch.float64
    assert fake.captured == [((3, 4), torch.float32), ((3, 4), torch.float64)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_real_capture_replays_the_eager_forward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).cuda().eval()
    graphed = CudaGraphed(net)
    for batch in (1, 8, 1):
        x = torch.randn(batch, 16, device="cuda")
        with torch.no_grad():
            ref = net(x)
        got = graphed(x)
        torch.testing.assert_close(got, ref)
    assert len(graphed.graphs) == 2

"""benchmarks/tensor_memory.py: the tensor-by-tensor peak the exact-KL memory ratios are measured with."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from tensor_memory import PeakTensorMemory  # noqa: E402

MB = 1000 * 1000 * 4  # bytes of a (1000, 1000) float32 tensor


def test_peak_counts_live_storages_once_and_forgets_freed_ones():
    x = torch.randn(1000, 1000)  # created outside the block: not counted
    with PeakTensorMemory() as m:
        y = x * 2
        view = y[:10]  # a view: no new storage
        y.add_(1)  # in place: no new storage
        z = y + 1  # two alive: the peak
        del y, view
        w = z * 3  # y freed before w exists: still two alive
        del z
        s = w.sum()
    assert m.peak_bytes == 2 * MB + 0  # the scalar sum came after z was freed
    assert m.allocated_bytes == 3 * MB + s.untyped_storage().nbytes()
    assert m.current_bytes == MB + s.untyped_storage().nbytes()  # w and s are alive at exit


def test_peak_includes_autograd_saved_tensors_and_backward():
    x = torch.randn(1000, 1000)
    w = torch.randn(1000, 1000, requires_grad=True)

    def chain():
        return (x * w).exp().exp().exp().exp().sum()  # each exp saves its output for backward

    with PeakTensorMemory() as no_grad:
        with torch.no_grad():
            chain()
    with PeakTensorMemory() as with_grad:
        chain().backward()
    assert no_grad.peak_bytes <= 2 * MB + 64  # an op's input and output, nothing kept
    assert with_grad.peak_bytes >= 4 * MB  # the four saved outputs alive at the end of the forward
    assert with_grad.allocated_bytes >= no_grad.allocated_bytes + MB  # backward's tensors and w's gradient
    assert w.grad is not None


def test_a_bigger_intermediate_raises_the_peak_deterministically():
    x = torch.randn(64, 256)
    head = torch.randn(256, 8000)

    def chunked():
        return sum((x[i : i + 8] @ head).logsumexp(-1).sum() for i in range(0, 64, 8))

    def full():
        return (x @ head).logsumexp(-1).sum()

    peaks = {}
    for name, fn in (("chunked", chunked), ("full", full), ("chunked again", chunked)):
        with PeakTensorMemory() as m:
            fn()
        peaks[name] = m.peak_bytes
    assert peaks["chunked"] == peaks["chunked again"]
    assert peaks["full"] >= 64 * 8000 * 4 > 3 * peaks["chunked"]

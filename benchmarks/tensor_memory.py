"""Peak tensor memory of a block of torch code, counted tensor by tensor (CPU or any device).

Process RSS (``VmHWM``) is what the OS sees, but on CPU it also moves with glibc's arenas, the allocator's caching of
freed blocks and page reuse: the same computation in fresh processes peaked anywhere between 312 and 1206 MiB on
full-depth SmolLM2, so an RSS ratio of two paths that differ by a few percent cannot be resolved. This counts what the
paths themselves allocate: every tensor storage created inside the block (forward, autograd's saved tensors,
backward, gradients, autocast's casts), alive until torch frees it. Deterministic for a given computation and
input, and the same on CUDA as ``torch.cuda.max_memory_allocated`` would see up to the caching allocator's rounding.
Kernels' internal scratch buffers that never become tensors are not seen.

    with PeakTensorMemory() as m:
        loss = model(x).sum(); loss.backward()
    m.peak_bytes   # the most bytes of storages created in the block alive at once

Not for timing: the dispatch mode checks each op's outputs, which slows the block down.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTensorMemory(TorchDispatchMode):
    """A dispatch mode that tracks the storages created by ops inside it (``device``: a type like "cpu" or None for
    all): ``current_bytes`` alive now, ``peak_bytes`` the most alive at once, ``allocated_bytes`` their sum."""

    def __init__(self, device: str | None = "cpu"):
        super().__init__()
        self.device = device
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current_bytes = self.peak_bytes = self.allocated_bytes = 0

    def _sweep(self) -> None:
        """Forget the storages torch has freed since the last op (before counting the next op's outputs, so a block
        freed between two ops is not counted twice, nor its address mistaken for the new one)."""
        dead = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in dead:
            self.current_bytes -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._sweep()
        # an output on an input's storage is a view or an in-place result, not an allocation (the input may have
        # been created before the block: a view of a weight allocates nothing)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or (self.device is not None and t.device.type != self.device):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._live or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._live[key] = (StorageWeakRef(storage), nbytes)
            self.current_bytes += nbytes
            self.allocated_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out

    def __exit__(self, *exc):
        self._sweep()
        return super().__exit__(*exc)

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

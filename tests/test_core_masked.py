import pytest
import torch

from trl_extras.core.masked import masked_mean, masked_moments, masked_sum, masked_var, masked_whiten


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, generator=g) * 3 + 2
    mask = torch.rand(5, 7, generator=g) > 0.4
    mask[0, 0] = True
    return x, mask


def test_masked_stats_match_selected_elements():
    x, mask = _data()
    sel = x[mask].double()
    assert torch.allclose(masked_sum(x, mask).double(), sel.sum(), atol=1e-5)
    assert torch.allclose(masked_mean(x, mask).double(), sel.mean(), atol=1e-6)
    assert torch.allclose(masked_var(x, mask).double(), sel.var(unbiased=False), atol=1e-5)
    assert torch.allclose(masked_var(x, mask, unbiased=True).double(), sel.var(unbiased=True), atol=1e-5)


def test_masked_mean_per_row_and_empty_rows():
    x, mask = _data(1)
    mask[2] = False
    rows = masked_mean(x, mask, dim=1)
    for i in range(5):
        expected = x[i][mask[i]].mean() if mask[i].any() else torch.tensor(0.0)
        assert torch.allclose(rows[i], expected, atol=1e-6)


def test_padding_values_never_leak():
    x, mask = _data(2)
    poisoned = x.masked_fill(~mask, float("nan"))
    assert torch.isfinite(masked_mean(poisoned, mask))
    assert torch.isfinite(masked_var(poisoned, mask))
    w = masked_whiten(poisoned, mask)
    assert torch.isfinite(w).all() and (w[~mask] == 0).all()


def test_whiten_zero_mean_unit_variance_and_keep_mean():
    x, mask = _data(3)
    w = masked_whiten(x, mask)
    assert abs(w[mask].mean().item()) < 1e-5
    assert abs(w[mask].var(unbiased=False).item() - 1) < 1e-4
    k = masked_whiten(x, mask, shift_mean=False)
    assert abs(k[mask].mean().item() - x[mask].mean().item()) < 1e-5
    assert abs(k[mask].var(unbiased=False).item() - 1) < 1e-4


def test_large_offset_is_stable():
    # E[x^2] - E[x]^2 would lose all precision here; the two-pass moments do not
    x, mask = _data(4)
    _, var, _ = masked_moments(x * 100 + 1e6, mask)
    assert torch.allclose(var, x[mask].double().var(unbiased=False) * 1e4, rtol=1e-3)


def test_empty_mask_raises_clear_error():
    x = torch.randn(2, 3)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for fn in (masked_mean, masked_var, masked_whiten):
        with pytest.raises(ValueError, match="no valid element"):
            fn(x, empty)
    with pytest.raises(ValueError, match="shape"):
        masked_mean(x, torch.ones(3, 2))


class _FakeAccelerator:
    """Two 'processes' simulated by summing the other shard's contribution in reduce()."""

    num_processes = 2

    def __init__(self, other_x, other_mask):
        self.other = (other_x, other_mask)
        self.calls = 0

    def reduce(self, t, reduction="sum"):
        x, m = self.other
        m = m.double()
        # mirror the two passes of masked_moments on the other shard
        if t.numel() == 2:
            other = torch.stack([(x.double() * m).sum(), m.sum()])
        else:
            mean = self._mean
            other = (((x.double() - mean) ** 2) * m).sum()
        self.calls += 1
        out = t + other
        if t.numel() == 2:
            self._mean = out[0] / out[1]
        return out


def test_global_moments_equal_full_batch():
    x, mask = _data(5)
    acc = _FakeAccelerator(x[3:], mask[3:])
    mean, var, count = masked_moments(x[:3], mask[:3], accelerator=acc)
    full_mean, full_var, full_count = masked_moments(x, mask)
    assert acc.calls == 2
    assert torch.allclose(mean, full_mean) and torch.allclose(var, full_var) and count == full_count

import pytest
import torch

from trl_extras.core.advantages import compute_gae, normalize_advantages


def _brute_gae(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        for i, t in enumerate(idx):
            total = 0.0
            for k, t2 in enumerate(idx[i:]):
                nxt = values[b, idx[i + k + 1]].item() if i + k + 1 < len(idx) else 0.0
                delta = rewards[b, t2].item() + gamma * nxt - values[b, t2].item()
                total += (gamma * lam) ** k * delta
            adv[b, t] = total
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_brute_force(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 9, generator=g, dtype=torch.float64)
    values = torch.randn(4, 9, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False  # right padding
    mask[2, 3] = False  # a hole: skipped, not a zero-reward step
    mask[3, :] = False  # empty row
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    expected = _brute_gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, expected, atol=1e-10)
    assert torch.allclose(ret[mask], (adv + values)[mask])
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


def test_gae_lambda_one_gamma_one_is_return_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.3, 0.2, 0.1, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = compute_gae(rewards, values, mask, 1.0, 1.0)
    assert torch.allclose(ret[0, :3], torch.tensor([1.0, 1.0, 1.0]))
    assert torch.allclose(adv[0, :3], torch.tensor([0.7, 0.8, 0.9]))


def test_gae_shape_errors():
    with pytest.raises(ValueError, match="same"):
        compute_gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_batch_normalization_stats():
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(6, 5, generator=g) * 4 + 3
    mask = torch.rand(6, 5, generator=g) > 0.3
    out = normalize_advantages(adv, mask, mode="batch")
    assert abs(out[mask].mean().item()) < 1e-5
    assert abs(out[mask].var(unbiased=False).item() - 1) < 1e-4
    assert (out[~mask] == 0).all()
    kept = normalize_advantages(adv, mask, mode="batch", keep_mean=True)
    assert abs(kept[mask].mean().item() - adv[mask].mean().item()) < 1e-4
    assert abs(kept[mask].var(unbiased=False).item() - 1) < 1e-4
    # affine rescaling of the advantages does not change the normalized result
    assert torch.allclose(normalize_advantages(adv * 100 + 50, mask), out, atol=1e-4)
    none = normalize_advantages(adv, mask, mode="none")
    assert torch.equal(none[mask], adv[mask]) and (none[~mask] == 0).all()


def test_group_normalization_per_prompt():
    g = torch.Generator().manual_seed(2)
    adv = torch.randn(6, 4, generator=g)
    adv[3:] += 10  # second prompt has a different scale/offset
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[0, 2:] = False
    gi = torch.tensor([0, 0, 0, 1, 1, 1])
    out = normalize_advantages(adv, mask, mode="group", group_index=gi)
    for k in (0, 1):
        rows = gi == k
        vals = out[rows][mask[rows]]
        assert abs(vals.mean().item()) < 1e-5
        assert abs(vals.var(unbiased=False).item() - 1) < 1e-4
    # sequence-level (B,) advantages, keep_mean
    seq = torch.tensor([1.0, 2.0, 3.0, 10.0, 30.0, 50.0])
    out = normalize_advantages(seq, mode="group", group_index=gi, keep_mean=True)
    assert torch.allclose(out[:3].mean(), torch.tensor(2.0)) and torch.allclose(out[3:].mean(), torch.tensor(30.0))
    assert torch.allclose(out[3:].var(unbiased=False), torch.tensor(1.0), atol=1e-4)


def test_normalization_errors():
    adv = torch.randn(2, 3)
    with pytest.raises(ValueError, match="group_index"):
        normalize_advantages(adv, mode="group")
    with pytest.raises(ValueError, match="Unknown"):
        normalize_advantages(adv, mode="whiten")
    with pytest.raises(ValueError, match="no valid element"):
        normalize_advantages(adv, torch.zeros(2, 3, dtype=torch.bool))

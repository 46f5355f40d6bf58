import pytest
import torch

from trl_extras.core.kl import entropy_from_logits, exact_kl, kl_from_logprobs, logprobs_from_logits


def _brute_kl(logits, ref_logits, temperature=1.0):
    p = torch.softmax(logits.double() / temperature, -1)
    q = torch.softmax(ref_logits.double() / temperature, -1)
    return (p * (p.log() - q.log())).sum(-1)


def _logits(seed, B=3, T=11, V=50, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, T, V, generator=g) * scale
    return a, a + torch.randn(B, T, V, generator=g)


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7, 33, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_exact_kl_matches_float64_brute_force(chunk_size, temperature):
    logits, ref = _logits(0)
    mask = torch.rand(3, 11, generator=torch.Generator().manual_seed(1)) > 0.3
    expected = _brute_kl(logits, ref, temperature)
    got = exact_kl(logits, ref, mask=mask, chunk_size=chunk_size, temperature=temperature)
    assert got.shape == (3, 11)
    assert torch.allclose(got.double()[mask], expected[mask], atol=1e-5)
    assert (got[~mask] == 0).all()
    nomask = exact_kl(logits, ref, chunk_size=chunk_size, temperature=temperature)
    assert torch.allclose(nomask.double(), expected, atol=1e-5)


def test_exact_kl_properties_and_bf16_input():
    logits, ref = _logits(2)
    assert torch.allclose(exact_kl(logits, logits), torch.zeros(3, 11), atol=1e-6)
    assert (exact_kl(logits, ref) >= -1e-6).all()
    # low-precision logits are upcast per chunk
    bf = exact_kl(logits.bfloat16(), ref.bfloat16(), chunk_size=5)
    assert bf.dtype == torch.float32
    assert torch.allclose(bf.double(), _brute_kl(logits.bfloat16().float(), ref.bfloat16().float()), atol=1e-5)
    # all-false mask gives zeros; gradient flows
    assert (exact_kl(logits, ref, mask=torch.zeros(3, 11, dtype=torch.bool)) == 0).all()
    lg = logits.clone().requires_grad_()
    exact_kl(lg, ref, chunk_size=4).sum().backward()
    assert lg.grad is not None and lg.grad.abs().sum() > 0


def test_exact_kl_bad_input():
    logits, ref = _logits(3)
    with pytest.raises(ValueError, match="shape"):
        exact_kl(logits, ref[:, :-1])
    with pytest.raises(ValueError, match="mask"):
        exact_kl(logits, ref, mask=torch.ones(3, 10))
    with pytest.raises(ValueError, match="chunk_size"):
        exact_kl(logits, ref, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        exact_kl(logits, ref, temperature=0.0)


def test_estimator_definitions():
    lp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    log_r = ref - lp
    assert torch.allclose(kl_from_logprobs(lp, ref, "k1"), -log_r)
    assert torch.allclose(kl_from_logprobs(lp, ref, "k2"), 0.5 * log_r**2)
    assert torch.allclose(kl_from_logprobs(lp, ref, "k3"), log_r.exp() - 1 - log_r)
    assert (kl_from_logprobs(lp, ref, "k3") >= 0).all()
    masked = kl_from_logprobs(lp, ref, "k1", mask=torch.tensor([[1, 0, 1]]))
    assert masked[0, 1] == 0 and masked[0, 0] == 0.5
    with pytest.raises(ValueError, match="exact_kl"):
        kl_from_logprobs(lp, ref, "exact")
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        kl_from_logprobs(lp, ref, "k4")


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_k1_k3_sample_means_converge_to_exact(temperature):
    # sample tokens from pi (at the temperature), average the single-sample estimators
    g = torch.Generator().manual_seed(4)
    V, n = 20, 200_000
    logits = torch.randn(V, generator=g)
    ref = logits + 0.8 * torch.randn(V, generator=g)
    exact = exact_kl(logits[None, None], ref[None, None], temperature=temperature).item()
    tokens = torch.multinomial(torch.softmax(logits / temperature, -1), n, replacement=True, generator=g)
    lp = logprobs_from_logits(logits.expand(1, n, V), tokens[None], temperature)
    ref_lp = logprobs_from_logits(ref.expand(1, n, V), tokens[None], temperature)
    for est in ("k1", "k3"):
        vals = kl_from_logprobs(lp, ref_lp, est)
        se = vals.std().item() / n**0.5
        assert abs(vals.mean().item() - exact) < 5 * se + 1e-4, (est, vals.mean().item(), exact)
    k2 = kl_from_logprobs(lp, ref_lp, "k2").mean().item()
    assert k2 > 0  # k2 is biased (not compared to exact), but non-negative
    # variance ordering on this distribution: k3 < k1
    assert kl_from_logprobs(lp, ref_lp, "k3").std() < kl_from_logprobs(lp, ref_lp, "k1").std()


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_logprobs_and_entropy_from_logits(chunk_size):
    logits, _ = _logits(5)
    labels = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(6))
    lp_full = torch.log_softmax(logits.double() / 0.9, -1)
    expected = lp_full.gather(-1, labels[..., None]).squeeze(-1)
    got = logprobs_from_logits(logits, labels, temperature=0.9, chunk_size=chunk_size)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    ent = entropy_from_logits(logits, temperature=0.9, chunk_size=chunk_size)
    assert torch.allclose(ent.double(), -(lp_full.exp() * lp_full).sum(-1), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_from_logits_has_the_entropy_gradient(temperature):
    """An entropy bonus in a loss (CEM's entropy_coef) needs the gradient; the kernel's entropy is a metric only."""
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 3, 11, generator=g) * 2).requires_grad_(True)
    weights = torch.rand(2, 3, generator=g)
    (entropy_from_logits(logits, temperature=temperature) * weights).sum().backward()
    ref = logits.detach().double().requires_grad_(True)
    lp = torch.log_softmax(ref / temperature, -1)
    (-(lp.exp() * lp).sum(-1) * weights.double()).sum().backward()
    assert logits.grad.abs().max() > 1e-3
    assert torch.allclose(logits.grad.double(), ref.grad, atol=1e-5)
    with torch.no_grad():  # the metric path: same values, no graph
        metric = entropy_from_logits(logits, temperature=temperature, chunk_size=2)
    assert not metric.requires_grad
    assert torch.allclose(metric.double(), -(lp.exp() * lp).sum(-1).detach(), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("parts", ["both", "logprobs", "kl"])
def test_kernel_closed_form_backward_matches_autograd(temperature, parts):
    from trl_extras.core.kl import token_stats_from_logits

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 11, generator=g) * 2).requires_grad_(True)
    ref = torch.randn(2, 3, 11, generator=g)
    labels = torch.randint(0, 11, (2, 3), generator=g)
    w_lp, w_kl = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    st = token_stats_from_logits(logits, labels, ref.clone(), temperature, with_exact_kl=parts != "logprobs")
    loss = (w_lp * st["logprobs"]).sum() * (parts != "kl") + ((w_kl * st["exact_kl"]).sum() if parts != "logprobs" else 0)
    (got,) = torch.autograd.grad(loss, logits)
    # plain autograd on the textbook formulas
    x = logits.detach().double().requires_grad_(True)
    logp = torch.log_softmax(x / temperature, -1)
    ref_logp = torch.log_softmax(ref.double() / temperature, -1)
    lp = logp.gather(-1, labels[..., None]).squeeze(-1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    torch.testing.assert_close(st["logprobs"].double(), lp, atol=1e-5, rtol=1e-5)
    expected_loss = (w_lp * lp).sum() * (parts != "kl") + ((w_kl * kl).sum() if parts != "logprobs" else 0)
    (want,) = torch.autograd.grad(expected_loss, x)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)

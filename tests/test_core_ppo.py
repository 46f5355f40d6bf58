"""core.ppo: each PPO piece against a brute-force loop or a closed form, and the KL gradient each estimator gives."""

import math

import pytest
import torch

from trl_extras.core.kl import kl_from_logprobs, token_stats_from_logits
from trl_extras.core.ppo import (
    AdaptiveKLController,
    RunningMoments,
    aggregate_loss,
    approx_kl,
    explained_variance,
    policy_loss,
    scores_to_token_rewards,
    value_loss,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_policy_loss_matches_brute_force():
    lp, old, adv = _rand(3, 5, seed=1) * 0.3, _rand(3, 5, seed=2) * 0.3, _rand(3, 5, seed=3)
    losses, clipped = policy_loss(lp, old, adv, cliprange=0.2)
    for i in range(3):
        for t in range(5):
            r = math.exp(lp[i, t] - old[i, t])
            a = adv[i, t].item()
            unclipped, clip = -a * r, -a * min(max(r, 0.8), 1.2)
            assert losses[i, t].item() == pytest.approx(max(unclipped, clip), rel=1e-5, abs=1e-6)
            assert bool(clipped[i, t]) == (clip > unclipped)
    plain, none_clipped = policy_loss(lp, old, adv, cliprange=None)
    torch.testing.assert_close(plain, -adv * torch.exp(lp - old))
    assert not none_clipped.any()


def test_value_loss_matches_brute_force():
    v, old, ret = _rand(2, 6, seed=4), _rand(2, 6, seed=5), _rand(2, 6, seed=6)
    losses, clipped = value_loss(v, old, ret, cliprange_value=0.2)
    for i in range(2):
        for t in range(6):
            vc = old[i, t] + min(max(v[i, t] - old[i, t], -0.2), 0.2)
            a, b = (v[i, t] - ret[i, t]).item() ** 2, (vc - ret[i, t]).item() ** 2
            assert losses[i, t].item() == pytest.approx(0.5 * max(a, b), rel=1e-5)
            assert bool(clipped[i, t]) == (b > a)
    torch.testing.assert_close(value_loss(v, old, ret, None)[0], 0.5 * (v - ret) ** 2)


def test_aggregate_loss_dapo_is_invariant_to_gradient_accumulation():
    losses = _rand(4, 6, seed=7)
    mask = torch.tensor([[1] * 6, [1] * 5 + [0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    n = mask.sum()
    whole = aggregate_loss(losses, mask, "dapo", num_items_in_batch=n)
    torch.testing.assert_close(whole, (losses * mask).sum() / n)
    # two micro-batches with 11 and 3 tokens: their dapo shares sum to the whole batch's loss
    split = sum(aggregate_loss(losses[s], mask[s], "dapo", 2, num_items_in_batch=n) for s in (slice(0, 2), slice(2, 4)))
    torch.testing.assert_close(split, whole)
    # bnpo weighs micro-batches equally whatever their token counts: not the whole batch's token mean
    bnpo = sum(aggregate_loss(losses[s], mask[s], "bnpo", 2) for s in (slice(0, 2), slice(2, 4)))
    assert not torch.allclose(bnpo, whole)
    torch.testing.assert_close(aggregate_loss(losses, mask, "bnpo"), whole)
    # two processes each holding half: DDP averages the gradients, so the loss is scaled by num_processes
    ddp = sum(aggregate_loss(losses[s], mask[s], "dapo", num_items_in_batch=n, num_processes=2) for s in (slice(0, 2), slice(2, 4))) / 2
    torch.testing.assert_close(ddp, whole)
    per_seq = torch.stack([(losses[i] * mask[i]).sum() / mask[i].sum() for i in range(4)]).mean()
    torch.testing.assert_close(aggregate_loss(losses, mask, "grpo"), per_seq)
    torch.testing.assert_close(aggregate_loss(losses, mask, "dr_grpo", max_completion_length=10), (losses * mask).sum() / 40)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        aggregate_loss(losses, mask, "dapo")
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(losses, mask, "token_mean")


def _categorical(V=7, seed=0, scale=1.0):
    return torch.log_softmax(_rand(V, seed=seed) * scale, -1)


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_approx_kl_is_unbiased_for_kl_old_new(scale):
    old, new = _categorical(seed=10, scale=scale), _categorical(seed=11, scale=scale)
    true_kl = (old.exp() * (old - new)).sum()
    # expectation over tokens sampled from the OLD policy, taken exactly by weighting every token by pi_old
    per_token = torch.stack([approx_kl((new[x] - old[x]).reshape(1, 1), torch.ones(1, 1)) for x in range(len(old))])
    torch.testing.assert_close((old.exp() * per_token).sum(), true_kl, rtol=1e-5, atol=1e-7)
    # Monte Carlo from pi_old agrees too
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(old.exp(), 200_000, replacement=True, generator=g)
    mc = approx_kl((new[x] - old[x])[None], torch.ones(1, len(x)))
    assert mc.item() == pytest.approx(true_kl.item(), rel=0.03)
    # the former formula expm1(-d) + d has expectation E_old[pi_old/pi] - 1 - KL(old||new): far off on far-apart
    # policies (1446.9 vs a true 7.02 at scale 3)
    former = (old.exp() * (torch.expm1(old - new) + (new - old))).sum()
    if scale > 1:
        assert former > 3 * true_kl


def _expected_loss_grad(logits_param, ref_logp, beta, estimator):
    """Gradient of the EXPECTED per-token PPO loss at the first update of a one-token bandit (reward 0):
    E_{x~pi_old}[policy_loss(x) (+ beta*KL direct term for 'exact')], pi_old = pi_theta (ratio 1)."""
    logp = torch.log_softmax(logits_param, -1)
    old = logp.detach()
    V = len(old)
    x = torch.arange(V)
    stats = token_stats_from_logits(logits_param[None].expand(V, V), x, ref_logp[None].expand(V, V),
                                    with_exact_kl=True)
    if estimator == "exact":
        kl_t = stats["exact_kl"].detach()  # the state's KL: the same for every token
    else:
        kl_t = kl_from_logprobs(old, ref_logp, estimator)
    advantages = -beta * kl_t  # reward 0, no baseline: the advantage is the KL penalty itself
    losses, _ = policy_loss(logp[x], old[x], advantages, cliprange=0.2)
    if estimator == "exact":
        losses = losses + beta * stats["exact_kl"]
    expected = (old.exp() * losses).sum()
    (grad,) = torch.autograd.grad(expected, logits_param)
    return grad


@pytest.mark.parametrize("estimator", ["k1", "exact"])
def test_expected_surrogate_gradient_is_minus_beta_grad_kl(estimator):
    beta = 0.7
    ref_logp = _categorical(seed=20)
    theta = (_rand(7, seed=21) * 2).requires_grad_(True)
    grad = _expected_loss_grad(theta, ref_logp, beta, estimator)
    logp = torch.log_softmax(theta, -1)
    (grad_kl,) = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta)
    # descending the loss = ascending the objective -beta*KL: loss gradient = +beta * grad KL
    torch.testing.assert_close(grad, beta * grad_kl, rtol=1e-4, atol=1e-6)


def test_exact_kl_in_the_reward_alone_has_no_gradient_in_a_bandit():
    """The state term -beta*KL(s) is the same for every token: without the direct term the expected gradient is 0."""
    ref_logp = _categorical(seed=20)
    theta = (_rand(7, seed=21) * 2).requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    old = logp.detach()
    kl = (old.exp() * (old - ref_logp)).sum()
    losses, _ = policy_loss(logp, old, torch.full((7,), -kl.item()), cliprange=0.2)
    (grad,) = torch.autograd.grad((old.exp() * losses).sum(), theta)
    assert grad.abs().max() < 1e-6


def test_explained_variance_closed_form():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    values = torch.tensor([[1.5, 2.0, 2.5, 0.0]])  # residual var 1/6 over var 2/3 -> 0.75
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.75, rel=1e-5)


def test_scores_to_token_rewards_puts_score_on_last_valid_token():


    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    kl = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10
    out = scores_to_token_rewards(torch.tensor([1.0, 2.0, 3.0]), kl, mask, kl_coef=0.5)
    expected = -0.5 * kl * mask
    expected[0, 2] += 1.0
    expected[1, 0] += 2.0  # the empty row gets nothing
    torch.testing.assert_close(out, expected)


def test_adaptive_kl_controller_moves_towards_target():


    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert math.isclose(ctl.update(2.0, 10), 0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert math.isclose(ctl.update(0.95, 10), 0.1 * (1 - 0.05 * 10 / 100))


def test_running_moments_match_brute_force():


    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 1, 17, 8)]
    rm = RunningMoments()
    for c in chunks:
        rm.update(c)
    allx = torch.cat(chunks).double()
    assert math.isclose(rm.mean, allx.mean().item(), rel_tol=1e-9)
    assert math.isclose(rm.std, allx.std(unbiased=False).item(), rel_tol=1e-9)




def _bandit(estimator, direct_term=True, steps=30, V=17, n=64, seed=0):
    """One-token bandit through the trainer's composition of core functions: reward 0, beta=1, Adam lr 1e-2, policy
    logits perturbed from the reference; per step: sample n tokens, KL penalty -> token rewards -> GAE (V=0) ->
    batch whitening -> clipped surrogate (+ beta*KL direct term for 'exact') -> 'dapo' aggregation -> Adam step."""
    from trl_extras.core.advantages import compute_gae, normalize_advantages

    g = torch.Generator().manual_seed(seed)
    ref_logits = torch.randn(V, generator=g)
    theta = (ref_logits + 1.5 * torch.randn(V, generator=g)).requires_grad_(True)
    ref_logp = torch.log_softmax(ref_logits, -1)
    opt = torch.optim.Adam([theta], lr=1e-2)

    def kl_now():
        logp = torch.log_softmax(theta.detach(), -1)
        return (logp.exp() * (logp - ref_logp)).sum().item()

    before = kl_now()
    for _ in range(steps):
        with torch.no_grad():
            old = torch.log_softmax(theta, -1)
            x = torch.multinomial(old.exp(), n, replacement=True, generator=g)[:, None]  # (B, T=1)
        mask = torch.ones_like(x)
        logits = theta.expand(n, 1, V)
        stats = token_stats_from_logits(logits, x, ref_logits.expand(n, 1, V), with_exact_kl=True)
        old_lp = old[x]
        if estimator == "exact":
            kl = stats["exact_kl"].detach()
        else:
            kl = kl_from_logprobs(old_lp, ref_logp[x], estimator)
        rewards = scores_to_token_rewards(torch.zeros(n), kl, mask, kl_coef=1.0)
        adv, _ = compute_gae(rewards, torch.zeros(n, 1), mask)
        adv = normalize_advantages(adv, mask, mode="batch")
        losses, _ = policy_loss(stats["logprobs"], old_lp, adv, cliprange=0.2)
        if estimator == "exact" and direct_term:
            losses = losses + 1.0 * stats["exact_kl"]
        loss = aggregate_loss(losses, mask, "dapo", num_items_in_batch=mask.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, kl_now()


def test_one_token_bandit_kl_falls_with_exact_and_k1():
    k1 = _bandit("k1")
    exact = _bandit("exact")
    state_term_only = _bandit("exact", direct_term=False)  # the former PPO: KL in the reward only
    print(f"bandit KL: k1 {k1[0]:.3f} -> {k1[1]:.3f}; exact {exact[0]:.3f} -> {exact[1]:.3f}; "
          f"exact without direct term {state_term_only[0]:.3f} -> {state_term_only[1]:.3f}")
    assert k1[1] < 0.9 * k1[0]
    assert exact[1] < 0.8 * exact[0]
    assert state_term_only[1] == pytest.approx(state_term_only[0], rel=1e-6)  # no gradient at all

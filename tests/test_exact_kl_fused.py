"""The fused chunked head kernel (modeling/head_kernel.py) and the cached reference hidden states (issue 23).

- the kernel's values and gradients equal autograd through the full (B, T, V) logits (fp32 and bf16), with chunks
  that do not divide T, masked positions and a temperature != 1; frozen and trainable heads;
- TRL's ChunkedDivergenceFunction (reverse KL) gives the same KL and gradient as ours where both run;
- the update with the reference's hidden states cached at rollout gives the same losses/gradients as recomputing
  them, for a separate reference and a PEFT reference, and never runs the reference trunk.
"""

import copy

import pytest
import torch

from trl_extras.modeling.head_kernel import head_token_stats
from trl_extras.modeling.lm import (
    completion_token_stats,
    policy_logprobs,
    position_ids_from_mask,
    reference_hidden_states,
)


def _inputs(B=3, T=7, H=16, V=50, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g).to(dtype)
    w = (0.3 * torch.randn(V, H, generator=g)).to(dtype)
    rh = (h.float() + 0.3 * torch.randn(B, T, H, generator=g)).to(dtype)
    rw = (w.float() + 0.1 * torch.randn(V, H, generator=g)).to(dtype)
    y = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[1, -3:] = 0  # a padded completion
    mask[2, 0] = 0
    a = torch.randn(B, T, generator=g) * mask  # upstream weights of log-probs / KL (the loss masks positions)
    c = torch.rand(B, T, generator=g) * mask
    return h, w, rh, rw, y, a, c


def _brute(h, w, rh, rw, y, tau):
    z = (h.float() @ w.float().t()) / tau
    rz = (rh.float() @ rw.float().t()) / tau
    logp, ref_logp = z.log_softmax(-1), rz.log_softmax(-1)
    p = logp.exp()
    return {
        "logprobs": logp.gather(-1, y.unsqueeze(-1)).squeeze(-1),
        "ref_logprobs": ref_logp.gather(-1, y.unsqueeze(-1)).squeeze(-1),
        "exact_kl": (p * (logp - ref_logp)).sum(-1),
        "entropy": -(p * logp).sum(-1),
    }


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("chunk_size", [None, 3, 1])
@pytest.mark.parametrize("train_head", [False, True])
def test_kernel_equals_autograd_through_full_logits(dtype, tol, chunk_size, train_head):
    tau = 0.7
    h, w, rh, rw, y, a, c = _inputs(dtype=dtype)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_(train_head)
    out = head_token_stats(h1, w1, None, y, rh, rw, None, temperature=tau, chunk_size=chunk_size,
                           with_ref_logprobs=True, with_exact_kl=True, with_entropy=True)  # fmt: skip
    ((out["logprobs"] * a).sum() + (out["exact_kl"] * c).sum()).backward()

    h2, w2 = h.float().clone().requires_grad_(), w.float().clone().requires_grad_(train_head)
    ref = _brute(h2, w2, rh, rw, y, tau)
    ((ref["logprobs"] * a).sum() + (ref["exact_kl"] * c).sum()).backward()
    for k in ("logprobs", "ref_logprobs", "exact_kl", "entropy"):
        assert out[k].dtype == torch.float32
        torch.testing.assert_close(out[k], ref[k].detach(), atol=tol * 10, rtol=tol * 10, msg=k)
    assert not out["entropy"].requires_grad and not out["ref_logprobs"].requires_grad
    assert h1.grad.dtype == dtype
    scale = h2.grad.abs().max()
    torch.testing.assert_close(h1.grad.float() / scale, h2.grad / scale, atol=tol * 3, rtol=0)
    if train_head:
        scale = w2.grad.abs().max()
        torch.testing.assert_close(w1.grad.float() / scale, w2.grad / scale, atol=tol * 3, rtol=0)
    # masked positions: no gradient reaches their hidden states
    assert h1.grad[1, -3:].abs().max() == 0 and h1.grad[2, 0].abs().max() == 0


def test_kernel_logprobs_only_and_kl_only():
    """The k1 path (log-probs only) and a KL-only loss (GRPO's exact-KL term) each get their own gradient."""
    h, w, rh, rw, y, a, c = _inputs()
    for with_kl, weights in ((False, (1.0, 0.0)), (True, (0.0, 1.0))):
        h1 = h.clone().requires_grad_()
        out = head_token_stats(h1, w, None, y, rh if with_kl else None, rw if with_kl else None, None,
                               temperature=1.3, chunk_size=2, with_exact_kl=with_kl)  # fmt: skip
        loss = (out["logprobs"] * a).sum() * weights[0] + ((out["exact_kl"] * c).sum() * weights[1] if with_kl else 0)
        loss.backward()
        h2 = h.clone().requires_grad_()
        ref = _brute(h2, w, rh, rw, y, 1.3)
        ((ref["logprobs"] * a).sum() * weights[0] + (ref["exact_kl"] * c).sum() * weights[1]).backward()
        torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-4)


def test_kernel_with_bias_and_no_grad_is_the_same_forward():
    h, w, rh, rw, y, a, c = _inputs()
    bias = torch.randn(w.shape[0])
    with torch.no_grad():
        a_ = head_token_stats(h, w, bias, y, rh, rw, bias, chunk_size=2, with_exact_kl=True)
    b_ = head_token_stats(h.clone().requires_grad_(), w, bias, y, rh, rw, bias, chunk_size=2, with_exact_kl=True)
    for k in ("logprobs", "exact_kl"):  # bit for bit: the PPO ratio is exactly 1 at the first update
        assert torch.equal(a_[k], b_[k].detach())
    ref = _brute(torch.cat([h, torch.ones(*h.shape[:2], 1)], -1), torch.cat([w, bias[:, None]], -1),
                 torch.cat([rh, torch.ones(*h.shape[:2], 1)], -1), torch.cat([rw, bias[:, None]], -1), y, 1.0)  # fmt: skip
    torch.testing.assert_close(a_["exact_kl"], ref["exact_kl"], atol=1e-5, rtol=1e-4)


def test_trl_chunked_divergence_equals_ours():
    """Where both run: TRL's ChunkedDivergenceFunction(beta=1: reverse KL, student gradient) == our exact KL."""
    from trl_extras.utils.upstream import trl_chunked_divergence

    fn = trl_chunked_divergence()
    if fn is None:
        pytest.skip("TRL's ChunkedDivergenceFunction moved (utils/upstream.py lists it)")
    h, w, rh, rw, y, a, c = _inputs()
    tau = 0.8
    h1 = h.clone().requires_grad_()
    ours = head_token_stats(h1, w, None, y, rh, rw, None, temperature=tau, chunk_size=3, with_exact_kl=True,
                            with_entropy=True)  # fmt: skip
    (ours["exact_kl"] * c).sum().backward()
    h2 = h.clone().requires_grad_()
    kl, ent = fn(h2.reshape(-1, h.shape[-1]), w, None, rh.reshape(-1, h.shape[-1]), rw, None, 1.0, tau)
    (kl.view_as(c) * c).sum().backward()
    torch.testing.assert_close(ours["exact_kl"], kl.view_as(c).detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours["entropy"], ent.view_as(c), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# cached reference hidden states through the models
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tiny_paths):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]).eval()
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref


@pytest.fixture(scope="module")
def peft_policy(tiny_paths):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_extras.modeling.reference import add_reference_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]).eval()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # a trained adapter: the reference is the frozen "ref" copy, not the base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1 * torch.randn_like(p))
    add_reference_adapter(model)
    with torch.no_grad():  # the policy moves on; the "ref" adapter stays
        for n, p in model.named_parameters():
            if "lora_B.default" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _batch(vocab, B=3, P=5, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, -2:] = 0
    return ids, mask, T


def _loss_and_grads(model, ids, mask, T, **kw):
    model.zero_grad(set_to_none=True)
    out = policy_logprobs(model, ids, mask, T, temperature=0.9, chunk_size=3, with_exact_kl=True, **kw)
    m = mask[:, -T:].float()
    loss = ((out["logprobs"] + 0.5 * out["exact_kl"]) * m).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), out, grads


def _count_forwards(module):
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("which", ["separate", "peft"])
def test_cached_reference_states_equal_recomputed(models, peft_policy, which):
    from trl_extras.modeling.lm import split_lm

    if which == "separate":
        policy, ref = copy.deepcopy(models[0]), models[1]
        ref_trunk = split_lm(ref)[0]
    else:
        policy, ref = peft_policy, None
        ref_trunk = split_lm(policy)[0]  # the PEFT reference IS the policy's trunk under the "ref" adapter
    ids, mask, T = _batch(policy.config.vocab_size)
    loss0, out0, grads0 = _loss_and_grads(policy, ids, mask, T, ref_model=ref)

    cached = completion_token_stats(policy, ref, ids, mask, T, temperature=0.9, chunk_size=3, return_ref_hidden=True)
    ref_hidden = cached["ref_hidden"]
    assert ref_hidden.shape[:2] == (3, T) and not ref_hidden.requires_grad
    torch.testing.assert_close(ref_hidden, reference_hidden_states(policy, ref, ids, mask, T), atol=0, rtol=0)

    calls, handle = _count_forwards(ref_trunk)
    try:
        loss1, out1, grads1 = _loss_and_grads(policy, ids, mask, T, ref_model=ref, ref_hidden=ref_hidden)
    finally:
        handle.remove()
    # the update's trunk calls: the policy's own trunk once; the reference trunk never
    assert len(calls) == (1 if which == "peft" else 0)
    torch.testing.assert_close(loss1, loss0, atol=1e-5, rtol=1e-5)
    for k in ("logprobs", "exact_kl"):
        torch.testing.assert_close(out1[k], out0[k], atol=1e-6, rtol=1e-5)
    assert grads1.keys() == grads0.keys() and grads0
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], atol=1e-6, rtol=1e-5, msg=n)
    # the rollout statistics and the update agree (the PPO ratio starts at 1, the KL at its rollout value)
    torch.testing.assert_close(out1["exact_kl"].detach(), cached["exact_kl"], atol=1e-6, rtol=1e-5)


def test_fused_update_equals_brute_force_full_logits(models):
    """The model-level path (trunk + fused kernel) == autograd through the model's own (B, T, V) logits."""
    policy = copy.deepcopy(models[0])
    ref = models[1]
    ids, mask, T = _batch(policy.config.vocab_size)
    loss, out, grads = _loss_and_grads(policy, ids, mask, T, ref_model=ref)

    policy.zero_grad(set_to_none=True)
    pos = position_ids_from_mask(mask)
    z = policy(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -T - 1 : -1] / 0.9
    with torch.no_grad():
        rz = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -T - 1 : -1] / 0.9
    logp, ref_logp = z.log_softmax(-1), rz.log_softmax(-1)
    lp = logp.gather(-1, ids[:, -T:].unsqueeze(-1)).squeeze(-1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    brute = ((lp + 0.5 * kl) * mask[:, -T:].float()).sum()
    brute.backward()
    torch.testing.assert_close(loss, brute.detach(), atol=1e-5, rtol=1e-5)
    for n, p in policy.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_ref_hidden_shape_is_checked(models):
    policy, ref = models
    ids, mask, T = _batch(policy.config.vocab_size)
    with pytest.raises(ValueError, match="ref_hidden"):
        policy_logprobs(policy, ids, mask, T, ref_model=ref, with_exact_kl=True,
                        ref_hidden=torch.zeros(3, T + 1, policy.config.hidden_size))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# ExactKLGRPOTrainer: one policy pass for GRPO's loss and the exact KL
# ---------------------------------------------------------------------------------------------------------------
def test_exact_kl_grpo_one_policy_pass(tiny_paths, tmp_path, monkeypatch):
    from test_exact_kl_grpo import _prepared_batch, _trainer

    from trl_extras.modeling.lm import split_lm

    trainer = _trainer(tiny_paths, tmp_path, exact_kl_coef=3.0, loss_type="bnpo")
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.model.eval()
    inputs = _prepared_batch(trainer)
    trunk = split_lm(trainer.model)[0]
    calls, handle = _count_forwards(trunk)
    try:
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        one_pass_calls = len(calls)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        # before: GRPO's own forward, then a second policy pass for the KL (the fallback path)
        monkeypatch.setattr(type(trainer), "_one_pass_possible", lambda self, model: False)
        calls.clear()
        trainer.model.zero_grad(set_to_none=True)
        before = trainer.compute_loss(trainer.model, inputs)
        before.backward()
        two_pass_calls = len(calls)
    finally:
        handle.remove()
    assert one_pass_calls == 1 and two_pass_calls == 2
    assert loss.item() == pytest.approx(before.item(), rel=1e-5, abs=1e-6)
    assert grads
    for n, p in trainer.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


# ---------------------------------------------------------------------------------------------------------------
# DDP (2 CPU processes): the chunked head runs inside the wrapper's forward, gradients equal one process
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["exact", "k1"])
def test_two_process_chunked_update_equals_one_process(tiny_paths, tmp_path, mode):
    import json
    import sys
    from pathlib import Path

    from helpers import launch_two_processes

    script = Path(__file__).parent / "scripts" / "fused_kl_ddp.py"
    out = tmp_path / "result.json"
    launch_two_processes(script, "ddp", tmp_path, tiny_paths["policy"], str(out), mode, timeout=300)
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2 and result["wrapper"] == "DistributedDataParallel"
    assert result["head_calls"] == 0  # no (B, T, V) fallback through the head module: the fused kernel ran

    sys.path.insert(0, str(script.parent))
    try:
        from fused_kl_ddp import build, global_batch, step
    finally:
        sys.path.pop(0)
    policy, ref = build(tiny_paths["policy"])
    ids, mask, T, a = global_batch(policy.config.vocab_size)
    loss = step(policy, ref, ids, mask, T, a, mode)
    assert result["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-5)
    grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert set(result["grads"]) == set(grads) and grads
    for n, g in grads.items():  # DDP averages the two shards' gradients: one process's sum / 2
        torch.testing.assert_close(torch.tensor(result["grads"][n]), g / 2, atol=1e-5, rtol=1e-4, msg=n)


# ---------------------------------------------------------------------------------------------------------------
# grad_hint: one combined gradient projection when the loss is known; a wrong hint costs a recompute, not the result
# ---------------------------------------------------------------------------------------------------------------
def _ppo_loss_parts(B=3, T=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    old = -3.0 + torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g)
    kl_coef = torch.tensor([0.1, 0.3, 0.05])
    mask = torch.ones(B, T)
    mask[1, -3:] = 0
    return old, adv, kl_coef, mask


@pytest.mark.parametrize("hint_ok", [True, False])
def test_grad_hint_gives_the_same_gradient(monkeypatch, hint_ok):
    from trl_extras.core.ppo import aggregate_loss, aggregation_weights, policy_loss, surrogate_grad_hint
    from trl_extras.modeling import head_kernel

    h, w, rh, rw, y, a, c = _inputs()
    old, adv, kl_coef, mask = _ppo_loss_parts()

    def aggregate(x):
        return aggregate_loss(x, mask, "grpo")

    weights = aggregation_weights(aggregate, mask.shape)
    hint = surrogate_grad_hint(old, adv, 0.2, kl_coef if hint_ok else 2 * kl_coef, weights)
    recomputed = []
    original = head_kernel._recompute_backward
    monkeypatch.setattr(head_kernel, "_recompute_backward", lambda *a, **k: recomputed.append(1) or original(*a, **k))

    def loss_of(out):
        losses, _ = policy_loss(out["logprobs"], old, adv, 0.2)
        return 0.5 * aggregate(losses + kl_coef[:, None] * out["exact_kl"])  # 0.5: a loss scale, as accumulation

    h1 = h.clone().requires_grad_()
    loss_of(head_token_stats(h1, w, None, y, rh, rw, None, temperature=0.8, chunk_size=3, with_exact_kl=True,
                             grad_hint=hint)).backward()  # fmt: skip
    h2 = h.clone().requires_grad_()
    loss_of(_brute(h2, w, rh, rw, y, 0.8)).backward()
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-6, rtol=1e-4)
    assert recomputed == ([] if hint_ok else [1])


def test_ppo_update_uses_cached_reference_and_the_hinted_gradient(tiny_paths, tmp_path, monkeypatch):
    """PPOTrainer (LoRA, exact KL): the rollout batch carries the reference's hidden states, the update consumes
    them, and every update backward takes the hinted single projection (the hint matches the real loss under the
    Trainer's scaling: no recompute)."""
    from peft import LoraConfig
    from test_ppo import _trainer

    from trl_extras.modeling import head_kernel

    scales, recomputed = [], []
    original_scale, original_recompute = head_kernel._hint_scale, head_kernel._recompute_backward
    monkeypatch.setattr(head_kernel, "_hint_scale", lambda *a: scales.append(original_scale(*a)) or scales[-1])
    monkeypatch.setattr(head_kernel, "_recompute_backward",
                        lambda *a, **k: recomputed.append(1) or original_recompute(*a, **k))  # fmt: skip
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = _trainer(tiny_paths, tmp_path, peft_config=cfg, max_steps=2, num_ppo_epochs=2, num_mini_batches=2,
                       gradient_accumulation_steps=2, learning_rate=5e-2, kl_estimator="exact")  # fmt: skip
    trainer.train()
    batch = trainer._rollout_batch
    assert batch.ref_hidden is not None and batch.ref_hidden.shape[:2] == batch.completion_ids.shape
    assert scales and all(s is not None for s in scales) and not recomputed

import contextlib
import copy

import pytest
import torch

from trl_extras.core.kl import exact_kl
from trl_extras.modeling.lm import completion_token_stats, policy_logprobs, position_ids_from_mask


@pytest.fixture(scope="module")
def models(tiny_paths):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]).eval()
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # make the reference differ
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref


def _batch(vocab, B=3, P=5, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    mask[1, :2] = 0  # left padding of a prompt
    mask[2, -2:] = 0  # right padding of a completion
    return ids, mask, T


def _full(model, ids, mask, T, temperature):
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    return out.logits[:, -T - 1 : -1].double() / temperature


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_completion_token_stats_equals_full_logits(models, chunk_size):
    policy, ref = models
    ids, mask, T = _batch(policy.config.vocab_size)
    temp = 0.7
    stats = completion_token_stats(policy, ref, ids, mask, T, temperature=temp, chunk_size=chunk_size)
    with torch.no_grad():
        lp = torch.log_softmax(_full(policy, ids, mask, T, temp), -1)
        rlp = torch.log_softmax(_full(ref, ids, mask, T, temp), -1)
    labels = ids[:, -T:, None]
    assert torch.allclose(stats["logprobs"].double(), lp.gather(-1, labels).squeeze(-1), atol=1e-5)
    assert torch.allclose(stats["ref_logprobs"].double(), rlp.gather(-1, labels).squeeze(-1), atol=1e-5)
    assert torch.allclose(stats["exact_kl"].double(), (lp.exp() * (lp - rlp)).sum(-1), atol=1e-5)
    assert torch.allclose(stats["entropy"].double(), -(lp.exp() * lp).sum(-1), atol=1e-5)
    assert stats["exact_kl"].abs().sum() > 0  # the reference really differs
    # without the entropy the in-place path (π taken in log π's buffer) gives the same numbers
    lean = completion_token_stats(
        policy, ref, ids, mask, T, temperature=temp, chunk_size=chunk_size, with_entropy=False
    )
    assert "entropy" not in lean
    for key in ("logprobs", "ref_logprobs", "exact_kl"):
        assert torch.allclose(lean[key], stats[key], atol=1e-6), key
    # same as exact_kl on full logits
    full_kl = exact_kl(
        _full(policy, ids, mask, T, 1.0).float(), _full(ref, ids, mask, T, 1.0).float(), temperature=temp
    )
    assert torch.allclose(stats["exact_kl"], full_kl, atol=1e-5)


def test_logprobs_match_generation_scores(models, tiny_tokenizer):
    # position ids from the mask reproduce what generate() computed for a left-padded batch
    policy, _ = models
    tok = tiny_tokenizer
    old_side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(["7 3 9 1 >", "2 >"], return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old_side
    out = policy.generate(
        **enc,
        max_new_tokens=4,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=None,
    )
    T = 4
    seq = out.sequences
    mask = torch.cat([enc["attention_mask"], torch.ones(2, T, dtype=torch.long)], 1)
    stats = completion_token_stats(policy, None, seq, mask, T, with_exact_kl=False)
    gen_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
    expected = gen_lp.gather(-1, seq[:, -T:, None]).squeeze(-1)
    assert torch.allclose(stats["logprobs"], expected, atol=1e-4)
    assert "ref_logprobs" not in stats and "exact_kl" not in stats


def test_peft_reference_is_base_with_adapter_disabled(tiny_paths):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]).eval()
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False),
    ).eval()
    ids, mask, T = _batch(base.config.vocab_size, seed=1)
    stats = completion_token_stats(peft_model, None, ids, mask, T, chunk_size=2)
    expected = completion_token_stats(base, None, ids, mask, T, with_exact_kl=False)
    assert torch.allclose(stats["ref_logprobs"], expected["logprobs"], atol=1e-5)
    assert not torch.allclose(stats["logprobs"], expected["logprobs"], atol=1e-3)  # the adapter is active
    assert (stats["exact_kl"] > 0).any()
    with_ref = completion_token_stats(peft_model, base, ids, mask, T, chunk_size=3)
    assert torch.allclose(with_ref["exact_kl"], stats["exact_kl"], atol=1e-5)
    # a custom reference context (here: the adapter left on) is honoured -> reference == policy, KL == 0
    same = completion_token_stats(peft_model, None, ids, mask, T, reference_context=contextlib.nullcontext)
    assert torch.allclose(same["exact_kl"], torch.zeros_like(same["exact_kl"]), atol=1e-6)


def test_fallback_without_separable_head(models, monkeypatch):
    from trl_extras.modeling import lm

    policy, ref = models
    ids, mask, T = _batch(policy.config.vocab_size, seed=2)
    chunked = completion_token_stats(policy, ref, ids, mask, T, chunk_size=2)
    monkeypatch.setattr(lm, "split_lm", lambda model: None)
    full = completion_token_stats(policy, ref, ids, mask, T, chunk_size=2)
    for key in chunked:
        assert torch.allclose(chunked[key], full[key], atol=1e-5), key


def test_fallback_honours_the_callers_position_ids(models, monkeypatch):
    """A caller's ``position_ids`` (ExactKLGRPOTrainer passes TRL's; packed or custom positions): the full-logits
    fallback (a head that is not separable) must run the model at those positions, as the split paths do, for the
    policy and the reference. (Positions that only shift by a constant would not show it: RoPE is relative.)"""
    from trl_extras.modeling import lm

    policy, ref = models
    ids, mask, T = _batch(policy.config.vocab_size, seed=3)
    positions = 2 * torch.arange(ids.size(1)).expand_as(ids)
    split = completion_token_stats(policy, ref, ids, mask, T, chunk_size=2, position_ids=positions)
    by_mask = completion_token_stats(policy, ref, ids, mask, T, chunk_size=2)
    assert not torch.allclose(split["logprobs"][1], by_mask["logprobs"][1], atol=1e-4)  # the positions matter
    monkeypatch.setattr(lm, "split_lm", lambda model: None)
    full = completion_token_stats(policy, ref, ids, mask, T, chunk_size=2, position_ids=positions)
    for key in split:
        assert torch.allclose(split[key], full[key], atol=1e-5), key


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_policy_logprobs_grad_matches_no_grad_stats(models, chunk_size):
    policy, _ = models
    ids, mask, T = _batch(policy.config.vocab_size, seed=3)
    out = policy_logprobs(policy, ids, mask, T, temperature=0.9, chunk_size=chunk_size, with_entropy=True)
    stats = completion_token_stats(policy, None, ids, mask, T, temperature=0.9, with_exact_kl=False)
    assert out["logprobs"].requires_grad
    assert torch.allclose(out["logprobs"].detach(), stats["logprobs"], atol=1e-5)
    assert torch.allclose(out["entropy"], stats["entropy"], atol=1e-5)
    policy.zero_grad()
    out["logprobs"].sum().backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    policy.zero_grad()


def test_policy_logprobs_chunked_grads_equal_full(models):
    policy, _ = models
    ids, mask, T = _batch(policy.config.vocab_size, seed=4)
    grads = []
    for chunk in (None, 2):
        policy.zero_grad()
        policy_logprobs(policy, ids, mask, T, chunk_size=chunk)["logprobs"].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    policy.zero_grad()
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_bad_inputs(models):
    policy, ref = models
    ids, mask, T = _batch(policy.config.vocab_size)
    with pytest.raises(ValueError, match="reference"):
        completion_token_stats(policy, None, ids, mask, T)
    with pytest.raises(ValueError, match="logits_to_keep"):
        completion_token_stats(policy, ref, ids, mask, ids.shape[1])
    with pytest.raises(ValueError, match="chunk_size"):
        completion_token_stats(policy, ref, ids, mask, T, chunk_size=0)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_exact_kl_to_reference_value_and_grad(models, chunk_size):
    from trl_extras.modeling.lm import exact_kl_to_reference

    policy, ref = models
    ids, mask, T = _batch(policy.config.vocab_size, seed=5)
    kl = exact_kl_to_reference(policy, ref, ids, mask, T, temperature=0.8, chunk_size=chunk_size)
    stats = completion_token_stats(policy, ref, ids, mask, T, temperature=0.8)
    assert torch.allclose(kl.detach(), stats["exact_kl"], atol=1e-5)
    # gradient equals the one through full logits
    policy.zero_grad()
    (kl * mask[:, -T:]).sum().backward()
    g_chunk = torch.cat([p.grad.flatten() for p in policy.parameters()])
    policy.zero_grad()
    lg = _full(policy, ids, mask, T, 1.0).float()
    with torch.no_grad():
        rl = _full(ref, ids, mask, T, 1.0).float()
    (exact_kl(lg, rl, temperature=0.8) * mask[:, -T:]).sum().backward()
    g_full = torch.cat([p.grad.flatten() for p in policy.parameters()])
    policy.zero_grad()
    assert torch.allclose(g_chunk, g_full, atol=1e-5)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in ref.parameters())


@pytest.mark.parametrize("autocast", [False, True])
def test_update_pass_equals_rollout_statistics_bit_for_bit(models, autocast):
    """The update's chunked pass (grad, with the exact KL) and the rollout's no-grad statistics share one path and
    one kernel: identical numbers, also under bf16 autocast (so PPO's first ratio is exactly 1)."""
    policy, ref = models
    ids, mask, T = _batch(policy.config.vocab_size, seed=5)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        stats = completion_token_stats(policy, ref, ids, mask, T, temperature=0.7, chunk_size=4)
        out = policy_logprobs(policy, ids, mask, T, temperature=0.7, chunk_size=4, ref_model=ref, with_exact_kl=True)
    assert torch.equal(out["logprobs"].detach(), stats["logprobs"])
    assert torch.equal(out["exact_kl"].detach(), stats["exact_kl"])
    assert out["exact_kl"].requires_grad
    policy.zero_grad()

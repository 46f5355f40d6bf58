"""One chunked update step (log-probs, exact KL or k1) of a tiny policy under DDP (2 CPU processes, gloo).

    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml tests/scripts/fused_kl_ddp.py MODEL OUT.json MODE

MODE: ``exact`` (exact KL from cached reference hidden states) or ``k1`` (log-probs only). Each process takes its
shard of the fixed global batch of ``global_batch()``; DDP averages the gradients. Rank 0 writes the averaged
gradients, the global loss and how often the policy's ``lm_head`` MODULE ran (0: the fused kernel read its weight
inside the wrapper's forward; the (B, T, V) fallback would call it).
"""

import copy
import json
import sys

import torch
from accelerate import Accelerator


def global_batch(vocab: int, B: int = 4, P: int = 5, T: int = 7):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    mask[1, :2] = 0
    mask[3, -2:] = 0
    a = torch.randn(B, T, generator=g)
    return ids, mask, T, a


def build(model_path: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ref = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    policy.get_output_embeddings().weight.requires_grad_(False)  # a frozen head (tied: the embeddings too)
    return policy, ref.requires_grad_(False)


def step(model, ref, ids, mask, T, a, mode: str):
    """Sum over this shard of (log-prob · a + 0.5 · exact KL) at valid positions, backpropagated."""
    from trl_extras.modeling.lm import policy_logprobs, reference_hidden_states

    exact = mode == "exact"
    ref_hidden = reference_hidden_states(model, ref, ids, mask, T) if exact else None
    out = policy_logprobs(model, ids, mask, T, temperature=0.9, chunk_size=3, ref_model=ref if exact else None,
                          with_exact_kl=exact, ref_hidden=ref_hidden)  # fmt: skip
    per_token = out["logprobs"] * a + (0.5 * out["exact_kl"] if exact else 0.0)
    loss = (per_token * mask[:, -T:]).sum()
    loss.backward()
    return loss.detach()


def main(model_path: str, out_path: str, mode: str) -> None:
    from trl_extras.modeling.lm import _unwrap

    acc = Accelerator(cpu=True)
    policy, ref = build(model_path)
    calls = []
    policy.get_output_embeddings().register_forward_hook(lambda *args: calls.append(1))
    model = acc.prepare(policy)
    assert model is not policy, "expected a DDP wrapper"
    ids, mask, T, a = global_batch(policy.config.vocab_size)
    rows = ids.shape[0] // acc.num_processes
    sl = slice(acc.process_index * rows, (acc.process_index + 1) * rows)
    loss = step(model, ref, ids[sl], mask[sl], T, a[sl], mode)
    total = acc.reduce(loss.unsqueeze(0), reduction="sum")
    grads = {n: p.grad.tolist() for n, p in _unwrap(model).named_parameters() if p.grad is not None}
    if acc.is_main_process:
        with open(out_path, "w") as f:
            json.dump({"num_processes": acc.num_processes, "loss": total.item(), "grads": grads,
                       "head_calls": len(calls), "wrapper": type(model).__name__}, f)  # fmt: skip
    acc.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Exact KL on CUDA: the chunked statistics in bf16, and an ExactKLGRPO step with LoRA on a 4-bit (NF4) base."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def _tiny(tmp_path):
    from trl_extras.testbed import TinyModelSpec, make_tiny_checkpoints

    spec = TinyModelSpec(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    return make_tiny_checkpoints(tmp_path / "tiny", spec=spec)


def test_exact_kl_bf16_logits_on_cuda_match_float64():
    from trl_extras.core.kl import exact_kl

    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(4, 64, 32000, device="cuda", generator=g).bfloat16()
    ref = (logits.float() + 0.3 * torch.randn(4, 64, 32000, device="cuda", generator=g)).bfloat16()
    got = exact_kl(logits, ref, chunk_size=16, temperature=0.7)
    p = torch.log_softmax(logits.double() / 0.7, -1)
    q = torch.log_softmax(ref.double() / 0.7, -1)
    assert torch.allclose(got.double(), (p.exp() * (p - q)).sum(-1), atol=1e-5)


def test_completion_token_stats_bf16_cuda(tmp_path):
    from transformers import AutoModelForCausalLM

    from trl_extras.modeling.lm import completion_token_stats

    paths = _tiny(tmp_path)
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.bfloat16).cuda().eval()
    ref = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.bfloat16)
    ref = ref.cuda().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(4, policy.config.vocab_size, (4, 24), device="cuda")
    mask = torch.ones_like(ids)
    chunked = completion_token_stats(policy, ref, ids, mask, 16, chunk_size=4)
    full = completion_token_stats(policy, ref, ids, mask, 16, chunk_size=None)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in chunked.values())
    assert torch.allclose(chunked["exact_kl"], full["exact_kl"], atol=1e-4)
    assert (chunked["exact_kl"] > 0).any()


def test_exact_kl_grpo_qlora_step_bf16(tmp_path):
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    paths = _tiny(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    args = ExactKLGRPOConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        save_strategy="no",
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        logging_steps=1,
        exact_kl_coef=0.1,
        exact_kl_chunk_size=4,
        model_init_kwargs={"dtype": torch.bfloat16},
        gradient_checkpointing=True,
    )
    assert args.bf16  # the default on a bf16-capable GPU
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = ExactKLGRPOTrainer(
        paths["policy"],
        reward_funcs=gold_reward_fn,
        args=args,
        train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=32, num_holdout_prompts=8)),
        quantization_config=quant,
        peft_config=lora,
    )
    assert trainer._exact_kl_ref is None  # reference = the 4-bit base with the adapter disabled
    assert any("4bit" in type(m).__name__ for m in trainer.model.modules())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    kls = [h["exact_kl"] for h in trainer.state.log_history if "exact_kl" in h]
    assert len(kls) == 2 and all(k == k and k >= -1e-3 for k in kls)  # finite (not NaN), non-negative up to bf16

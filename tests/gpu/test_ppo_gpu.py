"""PPO on CUDA: a QLoRA step in bf16 (4-bit NF4 policy and value bases with LoRA, adapter-disabled reference)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_qlora_ppo_step_bf16(tmp_path):
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    from trl_extras.testbed import TestbedConfig, TinyModelSpec, make_tiny_checkpoints, prompt_dataset
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    spec = TinyModelSpec(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    paths = make_tiny_checkpoints(tmp_path / "tiny", spec=spec)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    args = PPOConfig(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", max_steps=2,
        per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=2, max_completion_length=8,
        learning_rate=1e-3, model_init_kwargs={"dtype": torch.bfloat16}, gradient_checkpointing=True,
    )
    assert args.bf16  # the default on a bf16-capable GPU
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = PPOTrainer(
        paths["policy"], reward_funcs=paths["reward"], args=args,
        train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=32, num_holdout_prompts=8)),
        quantization_config=quant, peft_config=lora,
    )
    assert trainer.ref_model is None
    assert getattr(trainer.accelerator.unwrap_model(trainer.model), "is_loaded_in_4bit", False) or any(
        "4bit" in type(m).__name__ for m in trainer.model.modules()
    )
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(lora_before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    logs = [h for h in trainer.state.log_history if "kl/exact" in h]
    assert logs and all(torch.isfinite(torch.tensor(h["kl/exact"])) for h in logs)

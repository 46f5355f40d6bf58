"""QLoRA (bitsandbytes 4-bit NF4 base + LoRA) on the CPU: the paths tests/gpu/ checks on CUDA, as far as a CPU can.

bitsandbytes >= 0.49 runs 4-bit layers on the CPU. Its CPU inference fast path repacks the weights after a no-grad
forward and then stops gradients (see ``trl_extras.modeling.quantization``); these tests caught it: before the fix the
PPO step's policy ``grad_norm`` was exactly 0 with a 4-bit policy and the adapters never moved.
"""

import pytest
import torch
from helpers import cpu_config

bnb = pytest.importorskip("bitsandbytes")


def _quantization(dtype=torch.float32):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def paths_128(tmp_path_factory):
    """Tiny checkpoints wide enough for 4-bit blocks (hidden 128)."""
    from trl_extras.testbed import TinyModelSpec, make_tiny_checkpoints

    spec = TinyModelSpec(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny128"), spec=spec)


def _lora_grads(model, input_ids) -> list:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=input_ids).logits.float().sum().backward()
    return [p.grad for n, p in model.named_parameters() if "lora_B" in n]


def test_4bit_layers_stay_differentiable_after_no_grad_forward(paths_128):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_extras.modeling.quantization import keep_4bit_layers_differentiable

    model = AutoModelForCausalLM.from_pretrained(paths_128["policy"], quantization_config=_quantization(), device_map="cpu")
    model = get_peft_model(model, _lora())
    ids = torch.randint(4, 80, (2, 10), generator=torch.Generator().manual_seed(0))
    assert all(g is not None and g.norm() > 0 for g in _lora_grads(model, ids))

    fast_path = any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
    model.eval()
    with torch.no_grad():  # what a rollout does
        model(input_ids=ids)
    if fast_path:  # the bug this guards against (on CPUs with AVX512-BF16): no gradient reaches any adapter
        assert all(g is None for g in _lora_grads(model, ids))

    changed = keep_4bit_layers_differentiable(model)  # also restores layers that were already repacked
    assert changed == (len([m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]) if fast_path else 0)
    assert all(g is not None and g.norm() > 0 for g in _lora_grads(model, ids))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert all(g is not None and g.norm() > 0 for g in _lora_grads(model, ids))
    assert keep_4bit_layers_differentiable(torch.nn.Linear(2, 2)) == 0  # full precision: nothing to do


@pytest.mark.parametrize("bf16", [False, True])
def test_qlora_ppo_step(paths_128, tmp_path, bf16):
    """A 4-bit policy with LoRA (reference = the 4-bit base with the adapter disabled), a LoRA value model copied
    from the reward model, gradient checkpointing; in bf16 too (CPU autocast)."""
    from trl_extras.testbed import TestbedConfig, prompt_dataset
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    dtype = torch.bfloat16 if bf16 else torch.float32
    args = cpu_config(
        PPOConfig, tmp_path, bf16=bf16, max_steps=2, per_device_train_batch_size=4, num_mini_batches=1,
        num_ppo_epochs=2, max_completion_length=8, learning_rate=1e-3, model_init_kwargs={"dtype": dtype},
        gradient_checkpointing=True, seed=0,
    )
    trainer = PPOTrainer(
        paths_128["policy"], reward_funcs=paths_128["reward"], args=args,
        train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=32, num_holdout_prompts=8)),
        quantization_config=_quantization(dtype), peft_config=_lora(),
    )
    assert trainer.ref_model is None  # no second copy: the adapter is disabled for the reference
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.policy.modules())
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    moved = [n for n, p in trainer.policy.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert moved and all("lora_" in n for n in moved)
    logs = [h for h in trainer.state.log_history if "kl/exact" in h]
    assert logs and all(torch.isfinite(torch.tensor(h["kl/exact"])) for h in logs)
    assert all(h["grad_norm"] > 0 for h in trainer.state.log_history if "grad_norm" in h)


def test_qlora_exact_kl_grpo_step(paths_128, tmp_path):
    from trl_extras.testbed import TestbedConfig, prompt_dataset
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    def length_reward(prompts, completions, **kwargs):  # varies within a group, so advantages are not all 0
        return [float(len(c)) for c in completions]

    args = cpu_config(
        ExactKLGRPOConfig, tmp_path, max_steps=2, per_device_train_batch_size=8, num_generations=4,
        max_completion_length=8, learning_rate=1e-3, exact_kl_coef=0.1, exact_kl_chunk_size=4,
        gradient_checkpointing=True, seed=0,
    )
    trainer = ExactKLGRPOTrainer(
        paths_128["policy"], reward_funcs=length_reward, args=args,
        train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=32, num_holdout_prompts=8)),
        quantization_config=_quantization(), peft_config=_lora(),
    )
    assert trainer._exact_kl_ref is None  # reference = the 4-bit base with the adapter disabled
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    kls = [h["exact_kl"] for h in trainer.state.log_history if "exact_kl" in h]
    assert len(kls) == 2 and kls[1] > 0  # the policy moved away from its 4-bit base


def test_qlora_cem_rounds(paths_128, tmp_path):
    """CEM alternates no-grad sampling and fine-tuning on the elites: with a 4-bit base the adapter must train in
    every round (the rounds after the first are the ones the CPU repacking would silently freeze)."""
    from trl_extras import CEMTrainer
    from trl_extras.testbed import TestbedConfig, prompt_dataset
    from trl_extras.trainers.cem import CEMConfig

    def length_reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    args = cpu_config(
        CEMConfig, tmp_path / "cem", num_rounds=2, num_generations=4, max_completion_length=8, generation_batch_size=16,
        per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3, seed=0,
        model_init_kwargs={"quantization_config": _quantization()},
    )
    trainer = CEMTrainer(paths_128["policy"], length_reward, args, peft_config=_lora(),
                         train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=4, num_holdout_prompts=2)))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    snapshots = []
    lora = lambda: [p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n]  # noqa: E731
    snapshots.append(lora())
    trainer.train()
    snapshots.append(lora())
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))


def test_qlora_sft_keeps_training_after_reward_evaluation(paths_128, tmp_path):
    """The reward early-stopping callback samples from the model being fine-tuned (eval mode, no grad): a 4-bit
    base must stay trainable afterwards (the shared rollout path guards any model with trainable parameters)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trl_extras.callbacks.reward_early_stopping import RewardEarlyStoppingCallback
    from trl_extras.testbed import sft_dataset

    tok = AutoTokenizer.from_pretrained(paths_128["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(paths_128["policy"], quantization_config=_quantization(), device_map="cpu")
    data = sft_dataset(32).select_columns(["prompt", "completion"])
    reward = RewardEarlyStoppingCallback(lambda prompts, completions, **kw: [float(len(c)) for c in completions],
                                         ["1 2 >", "3 1 >"], max_new_tokens=4, patience=None)
    snapshots = []

    class AfterEvaluation(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, **kwargs):
            snapshots.append([p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n])

    args = cpu_config(SFTConfig, tmp_path, max_steps=4, per_device_train_batch_size=4, eval_strategy="steps",
                      eval_steps=2, learning_rate=1e-3)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(4)),
                         processing_class=tok, peft_config=_lora(), callbacks=[reward, AfterEvaluation()])
    reward.set_trainer(trainer)
    trainer.train()
    assert len(snapshots) == 2  # evaluations after steps 2 and 4
    # steps 3-4 came after the first reward evaluation: the adapter still moved
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))


def test_qlora_two_stage_reward_model_trains_after_stage_evaluation(paths_128, tmp_path):
    """Two-stage RM training on a 4-bit base with LoRA (bf16 autocast, as TRL's QLoRA recipe needs): stage 1 ends
    with an evaluation and stage 2 still trains the adapter. (Under bf16 this passes with or without the trainer's
    4-bit guard -- the fp32 PPO/CEM/SFT tests above are the ones that fail without it.)"""
    from peft import LoraConfig
    from transformers import TrainerCallback

    from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer
    from trl_extras.testbed import clean_pairs, dirty_pairs

    stage_lora = []

    class StageEnds(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            stage_lora.append([p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n])

        def on_train_end(self, args, state, control, model=None, **kwargs):
            stage_lora.append([p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n])

    args = cpu_config(
        TwoStageRewardConfig, tmp_path / "out", per_device_train_batch_size=4, per_device_eval_batch_size=8,
        max_steps=2, learning_rate=1e-3, pretrain_max_steps=2, pretrain_learning_rate=1e-3,
        bf16=True,  # TRL's RewardTrainer casts a 4-bit model's adapters to bf16 (the QLoRA recipe): autocast needed
        model_init_kwargs={"quantization_config": _quantization(torch.bfloat16), "device_map": "cpu"},
    )
    trainer = TwoStageRewardTrainer(
        model=paths_128["reward"], args=args, pretrain_dataset=dirty_pairs(16, seed=1),
        train_dataset=clean_pairs(16, seed=2), eval_dataset=clean_pairs(8, seed=3), callbacks=[StageEnds()],
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    trainer.train()
    assert len(stage_lora) == 4  # begin/end of stage 1, begin/end of stage 2
    assert any(not torch.equal(a, b) for a, b in zip(stage_lora[2], stage_lora[3]))  # stage 2 trained the adapter

"""Generation backends on CUDA (issue 25): continuous batching and vLLM (colocate) sample softmax(logits / T), and PPO
/ CEM train with vLLM pushing the policy's weights after each update. vLLM tests also need ``vllm`` importable
(``pip install trl-extras[vllm]``); none of these ran on the machines this was written on (no GPU, no vLLM)."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.gpu

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


def _qwen_like(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_sampling_distribution import QWEN_LIKE, _save_model

    return _save_model(tmp_path / "qwen_like", QWEN_LIKE)


def _first_token_check(model, tok, sampler, label, n=3000):
    from test_sampling_distribution import PROMPT, TEMPERATURE, _check_samples_match, _first_token_probs

    from trl_extras.modeling.generation import generate_rollouts

    probs = _first_token_probs(model, tok, PROMPT, TEMPERATURE).cpu()
    torch.manual_seed(0)
    rollout = generate_rollouts(model, tok, [PROMPT], max_new_tokens=1, temperature=TEMPERATURE, num_generations=n,
                                sampler=sampler)
    _check_samples_match(probs, rollout.completion_ids[:, 0], label)
    return rollout, probs


def test_continuous_batching_samples_softmax_over_temperature_on_cuda(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.modeling.generation import ContinuousBatchingSampler

    path = _qwen_like(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path).cuda()
    tok = AutoTokenizer.from_pretrained(path)
    rollout, probs = _first_token_check(model, tok, ContinuousBatchingSampler(), "continuous batching (CUDA)")
    engine = rollout.sampler_logprobs[:, 0]
    assert torch.allclose(engine, probs[rollout.completion_ids[:, 0]].log(), atol=1e-3)


@needs_vllm
def test_vllm_colocate_samples_softmax_over_temperature(tmp_path):
    from types import SimpleNamespace

    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.modeling.generation import make_sampler

    path = _qwen_like(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path).cuda()
    tok = AutoTokenizer.from_pretrained(path)
    args = SimpleNamespace(use_vllm=True, use_transformers_continuous_batching=False, vllm_mode="colocate",
                           vllm_server_base_url=None, vllm_server_host="0.0.0.0", vllm_server_port=8000,
                           vllm_server_timeout=240.0, vllm_group_port=51216, vllm_tensor_parallel_size=1,
                           vllm_gpu_memory_utilization=0.2, vllm_max_model_length=64, vllm_enable_sleep_mode=False,
                           vllm_model_impl="vllm", max_completion_length=4)
    sampler = make_sampler(args, model, tok, Accelerator())
    rollout, probs = _first_token_check(model, tok, sampler, "vLLM colocate")
    gap = (rollout.sampler_logprobs[:, 0] - probs[rollout.completion_ids[:, 0]].log()).abs()
    assert float(gap.max()) < 0.05  # processed_logprobs: after temperature, bf16/fp32 kernel differences only
    sampler.close()


@needs_vllm
def test_ppo_with_vllm_colocate_pushes_after_each_update(tmp_path):
    from peft import LoraConfig

    from trl_extras.testbed import TestbedConfig, TinyModelSpec, make_tiny_checkpoints, prompt_dataset
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    paths = make_tiny_checkpoints(tmp_path / "tiny", spec=TinyModelSpec(hidden_size=128, intermediate_size=256,
                                                                        num_hidden_layers=2, num_attention_heads=4))
    args = PPOConfig(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", max_steps=4,
                     per_device_train_batch_size=4, num_ppo_epochs=1, max_completion_length=8, learning_rate=1e-3,
                     use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2, vllm_max_model_length=128)
    trainer = PPOTrainer(paths["policy"], reward_funcs=paths["reward"], args=args,
                         train_dataset=prompt_dataset("train", TestbedConfig(num_train_prompts=32)),
                         peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainer.train()
    assert trainer.sampler.num_syncs == 4  # one push per rollout (one rollout per optimizer step here)
    gaps = [h["rollout/logprob_gap/max"] for h in trainer.state.log_history if "rollout/logprob_gap/max" in h]
    assert gaps and max(gaps) < 0.5, gaps  # a stale engine would drift further with lr=1e-3


@needs_vllm
def test_cem_with_vllm_colocate_pushes_once_per_round(tmp_path):
    from datasets import Dataset

    from trl_extras import CEMConfig, CEMTrainer
    from trl_extras.testbed import TinyModelSpec, make_tiny_checkpoints

    paths = make_tiny_checkpoints(tmp_path / "tiny", spec=TinyModelSpec(hidden_size=128, intermediate_size=256,
                                                                        num_hidden_layers=2, num_attention_heads=4))
    args = CEMConfig(output_dir=str(tmp_path / "out"), report_to="none", num_rounds=2, num_generations=2,
                     max_completion_length=8, per_device_train_batch_size=2, use_vllm=True,
                     vllm_gpu_memory_utilization=0.2, vllm_max_model_length=128)
    trainer = CEMTrainer(paths["policy"], lambda prompts, completions, **kw: [float(len(c)) for c in completions],
                         args=args, train_dataset=Dataset.from_dict({"prompt": ["3 1 >", "7 2 5 >", "1 >", "4 >"]}))
    trainer.train()
    assert trainer.sampler.num_syncs == args.num_rounds

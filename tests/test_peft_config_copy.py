"""A trainer must not write into the user's ``LoraConfig``: PEFT's ``get_peft_model`` expands
``target_modules="all-linear"`` and sets ``base_model_name_or_path`` on the config it is given, so a second trainer
built from the same object (the resume a user writes next) saw other settings than the first and refused its own
checkpoint (found by the examples' PPO stop-and-resume run)."""

from helpers import cpu_config

from trl_extras.testbed import TestbedConfig, prompt_dataset


def _reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def test_ppo_and_cem_leave_the_callers_lora_config_as_written(tiny_paths, tmp_path):
    from trl_extras import CEMTrainer
    from trl_extras.trainers.cem import CEMConfig
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    data = prompt_dataset("train", TestbedConfig(num_train_prompts=4, num_holdout_prompts=4, seed=0))
    cfg = _lora()
    before = cfg.to_dict()
    ppo_args = cpu_config(PPOConfig, tmp_path / "ppo", per_device_train_batch_size=4, max_steps=1,
                          max_completion_length=4)
    trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=_reward, args=ppo_args, train_dataset=data,
                         peft_config=cfg)
    assert cfg.to_dict() == before
    # the adapters themselves did get PEFT's expanded module list (the copy was used)
    assert trainer.model.peft_config["default"].target_modules != "all-linear"
    cem_args = cpu_config(CEMConfig, tmp_path / "cem", num_rounds=1, max_completion_length=4)
    CEMTrainer(tiny_paths["policy"], _reward, cem_args, train_dataset=data, peft_config=cfg)
    assert cfg.to_dict() == before

"""A plain PPO run on tiny testbed models, as a user runs it (a fresh process): run by tests/test_trial_findings.py,
which reads this process's stderr for false alarms. `lora_rm` uses a LoRA reward-model adapter folder on a causal-LM
base (what TwoStageRewardTrainer saves with LoRA) and LoRA for the policy, as the trial's user did.

Writes, as the last stderr line, `IMPORTED <json list>`: which of bitsandbytes / deepspeed this process imported.
"""

import json
import sys


def length_reward(prompts, completions, **kwargs):
    return [len(c) / 10 for c in completions]


def main(out: str, mode: str) -> None:
    from trl_extras.testbed import TestbedConfig, TinyModelSpec, make_tiny_checkpoints, prompt_dataset
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    paths = make_tiny_checkpoints(out + "/tiny", spec=spec)
    reward, peft_config = length_reward, None
    if mode == "lora_rm":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # a reward adapter on a causal-LM base (its score head is new, then trained and saved with the adapter)
        base = AutoModelForSequenceClassification.from_pretrained(paths["policy"], num_labels=1)
        rm = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
        reward = out + "/rm_adapter"
        rm.save_pretrained(reward)
        AutoTokenizer.from_pretrained(paths["policy"]).save_pretrained(reward)
        peft_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
        print("=== run starts", file=sys.stderr)  # the test reads what follows (the adapter was made above)
    dataset = prompt_dataset("train", TestbedConfig(num_train_prompts=16, num_holdout_prompts=8, seed=0))
    args = PPOConfig(output_dir=out + "/run", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                     logging_steps=1, disable_tqdm=True, per_device_train_batch_size=4, num_mini_batches=2,
                     num_ppo_epochs=1, max_steps=2, max_completion_length=6)
    trainer = PPOTrainer(paths["policy"], reward_funcs=reward, args=args, train_dataset=dataset,
                         peft_config=peft_config)
    trainer.train()
    imported = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("bitsandbytes", "deepspeed")})
    print("IMPORTED " + json.dumps(imported), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

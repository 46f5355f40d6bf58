"""SmolLM2-135M: PPO's value model with a user's LoRA reward-model folder (issue 21 item 1), and what a plain PPO
run prints on stderr (item 3). CPU, construction plus 2 optimizer steps; about a minute after the model is cached.

    python benchmarks/reward_contract_smollm2.py --out /tmp/rc     # prints one JSON line; stderr is the run's own

For each reward kind (a LoRA adapter folder as TwoStageRewardTrainer.save_model writes it, and a Python reward) it
reports the value model's trainable parameters, the size of the value state a checkpoint stores, and the reward's
display name. Before the reward contract the adapter folder gave 134,976,384 trainable parameters (the whole
value model) and a 540 MB value state; after it, the same 461,376 as a Python reward.
"""

import argparse
import json
import os
import time

import trl_extras  # noqa: F401  (first: it keeps peft from importing bitsandbytes eagerly)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/reward_contract_smollm2")
    out = parser.parse_args().out
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.testbed import smollm2_path
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    t0 = time.time()
    base = smollm2_path()
    adapter = os.path.join(out, "rm", "final")  # the user's reward model: a LoRA adapter folder with its head
    if not os.path.isdir(adapter):
        from trl_extras.modeling.loading import quiet_loading_report

        with quiet_loading_report():  # its new head is "MISSING" on purpose: this script's setup, not the run's
            rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        get_peft_model(rm, lora).save_pretrained(adapter)
        AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    prompts = [[{"role": "user", "content": f"What is {a} + {b}?"}] for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    result = {}
    for kind, reward in (("adapter_folder", adapter), ("python", lambda prompts, completions, **k: [0.0] * len(completions))):
        args = PPOConfig(output_dir=os.path.join(out, f"ppo_{kind}"), use_cpu=True, bf16=False, report_to="none",
                         save_strategy="no", logging_steps=1, disable_tqdm=True, per_device_train_batch_size=4,
                         num_mini_batches=1, num_ppo_epochs=1, max_steps=2, max_completion_length=8)  # fmt: skip
        trainer = PPOTrainer(base, reward_funcs=reward, args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
                             peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))  # fmt: skip
        trainer.train()
        value = trainer.accelerator.unwrap_model(trainer.value_model)
        state = {n: p.detach().cpu().contiguous() for n, p in value.named_parameters() if p.requires_grad}
        path = os.path.join(out, f"value_{kind}.safetensors")
        save_file(state, path)  # what _save_checkpoint stores for the value model
        result[kind] = dict(
            trainable=sum(p.numel() for p in value.parameters() if p.requires_grad),
            total=sum(p.numel() for p in value.parameters()),
            value_state_bytes=os.path.getsize(path),
            reward_names=trainer.reward_functions.names,
        )
        del trainer, value
    result["seconds"] = round(time.time() - t0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Run under ``accelerate launch`` (2 CPU processes): SFTTrainer + RewardEarlyStoppingCallback, one evaluation.

The reward depends on the prompt only (its digit count), so the gathered ``eval_reward`` must equal the mean over
ALL evaluation prompts whatever was generated; a per-process mean would differ. Writes JSON to ``argv[1]``.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from accelerate import PartialState  # noqa: E402

from trl_extras.testbed.task import parse_prompt  # noqa: E402

PROMPTS = ["1 >", "1 2 >", "1 2 3 >", "1 2 3 4 >", "1 2 3 4 5 >", "1 2 3 4 5 6 >", "7 7 7 7 7 7 7 >"]
SEEN = []


def digit_count(prompts, completions, **kwargs):
    SEEN.extend(prompts)
    return [float(len(parse_prompt(p))) for p in prompts]


def main(out_path: str) -> None:
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trl_extras.callbacks.reward_early_stopping import RewardEarlyStoppingCallback
    from trl_extras.testbed import TinyModelSpec, make_tiny_checkpoints, sft_dataset

    state = PartialState()
    root = os.path.join(os.path.dirname(out_path), f"rank{state.process_index}")
    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    paths = make_tiny_checkpoints(root, spec=spec)
    tok = AutoTokenizer.from_pretrained(paths["tokenizer"])
    data = sft_dataset(16).select_columns(["prompt", "completion"])
    cb = RewardEarlyStoppingCallback(digit_count, PROMPTS, max_new_tokens=4, patience=None)
    args = SFTConfig(
        output_dir=os.path.join(root, "out"), max_steps=2, per_device_train_batch_size=2, eval_strategy="steps",
        eval_steps=2, save_strategy="no", use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=paths["policy"], args=args, train_dataset=data, eval_dataset=data.select(range(4)),
                         processing_class=tok, callbacks=[cb])
    cb.set_trainer(trainer)
    trainer.train()
    from accelerate.utils import gather_object

    seen = gather_object([list(SEEN)])
    if state.is_main_process:
        logged = [h["eval_reward"] for h in trainer.state.log_history if "eval_reward" in h]
        result = {"num_processes": state.num_processes, "eval_reward": logged, "seen": seen}
        with open(out_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])

"""``trl-extras sft-reward-es``: TRL's ``SFTTrainer`` with reward-based evaluation and early stopping: at every
evaluation the model answers holdout prompts, a reward scores the answers (``eval_reward``), and training stops
after ``patience`` evaluations without improvement (keep the best with ``load_best_model_at_end``). The reward is
``--reward_funcs`` (reward-model paths, adapter or RewardEnsemble folders, ``module:function``, the testbed's
``gold`` / ``heuristic``; summed with ``--reward_weights``). Without ``--dataset_name`` it runs on the built-in
testbed: a freshly initialised tiny Llama is fine-tuned on sorted-digit answers, scored on holdout prompts by the
biased ``heuristic`` labeller (a stand-in for a reward model) unless ``--reward_funcs`` says otherwise, with the gold
reward logged alongside as ``eval_reward_gold``. With your own ``--dataset_name``, ``--model_name_or_path``,
``--eval_prompts_file`` and ``--reward_funcs`` are required.

examples:
  trl-extras sft-reward-es --config recipes/sft_reward_early_stopping.yaml
  trl-extras sft-reward-es --model_name_or_path out/base --dataset_name data.jsonl --eval_prompts_file holdout.jsonl \\
      --reward_funcs out/rm --output_dir out/sft_es

Deprecated: ``--reward_model``, ``--judge`` (use ``--reward_funcs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .utils import REWARD_FUNCS_HELP, REWARD_WEIGHTS_HELP


@dataclass
class RewardEarlyStoppingArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Causal LM to fine-tune. Default: a fresh tiny testbed model (random init)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "JSON/JSONL SFT data (prompt/completion or messages). Default: testbed data."}
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "JSON/JSONL SFT data for eval_loss. Default: testbed holdout prompts with sorted answers."}
    )
    eval_prompts_file: str | None = field(
        default=None, metadata={"help": "JSON/JSONL with a 'prompt' column for reward evaluation. Default: testbed holdout."}
    )
    num_eval_prompts: int = field(default=128, metadata={"help": "Prompts answered at each evaluation."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": REWARD_FUNCS_HELP + " Early-stops on it."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": REWARD_WEIGHTS_HELP})
    reward_model: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs PATH."})
    judge: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs gold|heuristic."})
    log_gold: bool = field(default=True, metadata={"help": "Testbed: also log the gold reward as eval_reward_gold."})
    patience: int = field(default=3, metadata={"help": "Evaluations without improvement before stopping (0: never)."})
    threshold: float = field(default=0.0, metadata={"help": "Minimum improvement that resets the patience counter."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest answer generated at evaluation."})
    generation_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature at evaluation (0: greedy)."})
    num_generations: int = field(default=1, metadata={"help": "Answers per evaluation prompt."})
    generation_chunk_size: int = field(default=64, metadata={"help": "Sequences per generate call. (a memory knob)"})
    num_train_examples: int = field(default=256, metadata={"help": "Testbed: SFT examples (small overfits sooner)."})
    num_eval_examples: int = field(default=128, metadata={"help": "Testbed: holdout examples for eval_loss."})
    correct_only: bool = field(default=True, metadata={"help": "Testbed: train on correctly sorted answers only."})
    init_seed: int = field(default=0, metadata={"help": "Testbed: seed of the fresh model's initialisation."})


def testbed_sft_splits(num_train: int, num_eval: int, correct_only: bool = True, seed: int = 0):
    """``(train, eval)`` prompt/completion datasets of the testbed; eval uses holdout prompts, sorted answers."""
    from datasets import Dataset

    from ..testbed import TestbedConfig, prompt_dataset, sft_dataset
    from ..testbed.task import format_completion, parse_prompt

    mix = {"correct": 1.0} if correct_only else None
    train = sft_dataset(num_train, TestbedConfig(seed=seed), mix=mix).select_columns(["prompt", "completion"])
    holdout = prompt_dataset("holdout", TestbedConfig(seed=seed))["prompt"][-num_eval:]
    eval_ = Dataset.from_dict(
        {"prompt": holdout, "completion": [format_completion(sorted(parse_prompt(p))) for p in holdout]}
    )
    return train, eval_


def build_trainer(script_args: RewardEarlyStoppingArguments, training_args):
    """SFTTrainer + RewardEarlyStoppingCallback from the parsed arguments (testbed defaults filled in)."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from ..callbacks.reward_early_stopping import RewardEarlyStoppingCallback
    from ..testbed import TestbedConfig, build_causal_lm, build_tokenizer, gold_reward_fn, prompt_dataset, save_tiny
    from .sbs import resolve_prompts
    from .utils import (
        check_reward_weights,
        deprecated_reward_flags,
        require,
        resolve_model_name,
        resolve_reward_funcs,
    )

    prog = "sft-reward-es"
    from .utils import testbed_reward_name

    deprecated_reward_flags(script_args, prog, {"reward_model": lambda v: [v], "judge": testbed_reward_name("--judge")})
    testbed = script_args.dataset_name in (None, "", "testbed")
    if not testbed:  # the testbed's fresh model, holdout prompts or heuristic on the user's data: wrong results
        require(script_args.model_name_or_path, "--model_name_or_path", prog, "the model to fine-tune")
        require(script_args.eval_prompts_file, "--eval_prompts_file", prog, "the prompts answered at evaluation")
        require(script_args.reward_funcs, "--reward_funcs", prog, "the reward to early-stop on: a reward-model path, "
                "module:function, or the testbed's gold / heuristic")  # fmt: skip
    specs = script_args.reward_funcs or ["heuristic"]  # the testbed's documented default: the biased proxy
    check_reward_weights(script_args.reward_weights, len(specs))
    model_path = resolve_model_name(script_args.model_name_or_path, "--model_name_or_path")
    if model_path is None:
        tok = build_tokenizer()
        model_path = save_tiny(
            build_causal_lm(tok, seed=script_args.init_seed), tok, Path(training_args.output_dir) / "init"
        )
    if testbed:
        train, eval_ = testbed_sft_splits(
            script_args.num_train_examples, script_args.num_eval_examples, script_args.correct_only, training_args.seed
        )
    else:
        train = load_dataset("json", data_files=script_args.dataset_name, split="train")
        eval_ = (
            load_dataset("json", data_files=script_args.eval_dataset_name, split="train")
            if script_args.eval_dataset_name else None
        )
    if script_args.eval_prompts_file or not testbed:
        prompts = resolve_prompts(script_args.eval_prompts_file, script_args.num_eval_prompts)
    else:
        # the first holdout prompts; the eval-loss set uses the last ones, so the two do not overlap
        prompts = prompt_dataset("holdout", TestbedConfig(seed=training_args.seed))["prompt"][: script_args.num_eval_prompts]
    reward = resolve_reward_funcs(specs)
    extra = {"gold": gold_reward_fn} if (testbed and script_args.log_gold) else None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    callback = RewardEarlyStoppingCallback(
        reward, prompts, processing_class=tokenizer, reward_weights=script_args.reward_weights,
        patience=script_args.patience or None,
        threshold=script_args.threshold, max_new_tokens=script_args.max_new_tokens,
        temperature=script_args.generation_temperature, num_generations=script_args.num_generations,
        batch_size=script_args.generation_chunk_size, extra_reward_funcs=extra, seed=training_args.seed,
    )
    trainer = SFTTrainer(
        model=model_path, args=training_args, train_dataset=train, eval_dataset=eval_, processing_class=tokenizer,
        callbacks=[callback],
    )
    callback.set_trainer(trainer)
    return trainer, callback


def main(argv=None) -> int:
    from trl import SFTConfig

    from .model_card import write_model_card
    from .utils import parse_args, report_metrics, summary_lines

    script_args, training_args = parse_args([RewardEarlyStoppingArguments, SFTConfig], argv, "sft-reward-es")
    trainer, callback = build_trainer(script_args, training_args)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    write_model_card(trainer, training_args, script_args.dataset_name)
    summary = {
        "best_eval_reward": callback.best,
        "best_step": callback.best_step,
        "stopped_at_step": trainer.state.global_step,
        "best_model_checkpoint": trainer.state.best_model_checkpoint,
        "evaluations": callback.history,
    }
    import os

    path = os.path.join(training_args.output_dir, "reward_early_stopping.json")
    best = "none" if callback.best is None else f"{callback.best:.4g}"
    lines = [f"Final: best eval_reward {best} at step {callback.best_step} (stopped at step "
             f"{trainer.state.global_step}; best checkpoint {trainer.state.best_model_checkpoint})"]  # fmt: skip
    lines += summary_lines({}, training_args.output_dir, path)
    report_metrics(summary, training_args.output_dir, "reward_early_stopping.json", trainer.args.should_save,
                   summary=lines)
    return 0

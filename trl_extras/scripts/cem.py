"""``trl-extras cem``: the cross-entropy method ("poor man's RL"): sample N answers per prompt, keep the best by
reward, fine-tune on them; repeat for ``num_rounds`` with diversity controls (SFT replay, KL, entropy floors).
``--reward_funcs`` takes reward-model paths, LoRA adapter folders, RewardEnsemble folders, ``module:function`` import
paths and the testbed's ``gold`` / ``heuristic`` (summed with ``--reward_weights``). Without ``--dataset_name`` (or
with ``testbed``) it runs on the built-in testbed: the cached SFT policy, testbed train prompts, the biased
``heuristic`` labeller as the optimized reward unless ``--reward_funcs`` says otherwise, and the gold reward tracked
every round; with your own prompts ``--reward_funcs`` and ``--model_name_or_path`` are required. Re-running the same
command resumes at the round where it stopped (``--resume_from_checkpoint false`` starts over).

examples:
  trl-extras cem --config recipes/cem_testbed.yaml
  trl-extras cem --model_name_or_path out/sft --dataset_name prompts.jsonl --reward_funcs out/rm \\
      --output_dir out/cem --num_rounds 3 --num_generations 8 --sft_mix_ratio 0.5 --kl_coef 0.1

Deprecated: ``--reward_model``, ``--reward``, ``--reward_ensemble`` (use ``--reward_funcs``), ``--resume false``
(use ``--resume_from_checkpoint false``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .utils import REWARD_FUNCS_HELP


@dataclass
class CEMScriptArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts: a JSON/JSONL file, a `save_to_disk` directory or a hub dataset with a 'prompt' "
                  "column. Default: the testbed's train prompts."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset_name`."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Holdout prompts evaluated after each round. Default (testbed): holdout."}
    )
    num_eval_prompts: int = field(default=128, metadata={"help": "Eval prompts used (the first ones)."})
    sft_dataset_name: str | None = field(
        default=None, metadata={"help": "Prompt/completion rows replayed when sft_mix_ratio > 0. Default: testbed SFT."}
    )
    reward_funcs: list[str] | None = field(default=None, metadata={"help": REWARD_FUNCS_HELP})
    reward_model: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs PATH."})
    reward: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs gold|heuristic."})
    reward_ensemble: bool = field(
        default=False, metadata={"help": "Deprecated: --reward_funcs loads RewardEnsemble folders as ensembles."}
    )
    track_gold: bool = field(default=True, metadata={"help": "Testbed: also score every sample with the gold reward."})


def _load(name: str, split: str = "train"):
    from .utils import load_dataset_from_spec

    return load_dataset_from_spec(name, split=split)


def build_trainer(script_args: CEMScriptArguments, cem_args, model_args):
    """A :class:`CEMTrainer` from parsed arguments, testbed defaults filled in only for a testbed run."""
    from trl import get_peft_config

    from ..testbed import TestbedConfig, gold_reward_fn, prompt_dataset
    from ..testbed import sft_dataset as testbed_sft
    from ..trainers.cem import CEMTrainer
    from .utils import (
        check_reward_weights,
        deprecated_reward_flags,
        require,
        resolve_model_name,
        resolve_reward_funcs,
        testbed_asked,
        testbed_reward_name,
    )

    deprecated_reward_flags(script_args, "cem", {"reward_model": lambda v: [v], "reward": testbed_reward_name("--reward"),
                                                 "reward_ensemble": None})  # fmt: skip
    testbed = testbed_asked({"--dataset_name": script_args.dataset_name})
    on_testbed_data = (script_args.dataset_name or "testbed") == "testbed"
    if not testbed:
        require(script_args.reward_funcs, "--reward_funcs", "cem", "what CEM selects by: a reward-model path, a "
                "RewardEnsemble folder, module:function, or the testbed's gold / heuristic")  # fmt: skip
        require(model_args.model_name_or_path, "--model_name_or_path", "cem", "the policy to improve")
    model = resolve_model_name(model_args.model_name_or_path or "testbed", "--model_name_or_path")
    reward_specs = script_args.reward_funcs or ["heuristic"]  # the testbed's documented default: the biased proxy
    check_reward_weights(cem_args.reward_weights, len(reward_specs))
    rewards = resolve_reward_funcs(reward_specs)
    train = prompt_dataset("train") if on_testbed_data else _load(script_args.dataset_name, script_args.dataset_split)
    if script_args.eval_dataset_name:
        eval_ = _load(script_args.eval_dataset_name)
    else:
        eval_ = prompt_dataset("holdout", TestbedConfig()) if on_testbed_data else None
    if eval_ is not None:
        eval_ = eval_.select(range(min(script_args.num_eval_prompts, len(eval_))))
    sft = None
    if cem_args.sft_mix_ratio > 0:
        sft = _load(script_args.sft_dataset_name) if script_args.sft_dataset_name else (testbed_sft(4000) if on_testbed_data
                                                                                        else None)
    eval_rewards = gold_reward_fn if (on_testbed_data and script_args.track_gold) else None
    return CEMTrainer(model, rewards if len(rewards) > 1 else rewards[0], cem_args, train_dataset=train,
                      eval_dataset=eval_, sft_dataset=sft, peft_config=get_peft_config(model_args),
                      eval_reward_funcs=eval_rewards)


def resume_flag(cem_args) -> None:
    """``--resume_from_checkpoint`` (the spelling of every other subcommand) sets CEM's ``resume``: 'false' starts
    over, 'true' / unset resumes from output_dir; a checkpoint folder is refused (CEM resumes by rounds). An explicit
    ``--resume false`` still works, with a deprecation warning."""
    import warnings

    value = cem_args.resume_from_checkpoint
    if not cem_args.resume:
        warnings.warn("trl-extras cem: --resume false is deprecated; use --resume_from_checkpoint false.",
                      FutureWarning, stacklevel=2)  # fmt: skip
    if value in (None, ""):
        return
    text = str(value).strip().lower()
    if text in ("false", "0", "no"):
        cem_args.resume = False
    elif text in ("true", "1", "yes"):
        cem_args.resume = True
    else:
        raise ValueError(f"--resume_from_checkpoint {value!r}: CEM resumes from its output_dir by rounds; pass 'true' "
                         "(default) or 'false' (start over), and --output_dir for the run's folder.")  # fmt: skip
    cem_args.resume_from_checkpoint = None


def main(argv: list[str] | None = None) -> int:
    from trl import ModelConfig

    from ..trainers.cem import CEMConfig
    from ..utils.progress import print_main
    from .model_card import write_model_card
    from .utils import parse_args, summary_lines

    script_args, cem_args, model_args = parse_args((CEMScriptArguments, CEMConfig, ModelConfig), argv, "cem")
    resume_flag(cem_args)
    trainer = build_trainer(script_args, cem_args, model_args)
    history = trainer.train()
    trainer.save_model(cem_args.output_dir)
    write_model_card(trainer, cem_args, script_args.dataset_name)  # like TRL's scripts: the dataset on the card
    keys = ("round", "reward_mean", "elite_reward_mean", "gold_mean", "entropy", "distinct_2", "eval_reward_mean",
            "eval_gold_mean", "stopped")
    for h in history:
        print_main(json.dumps({k: h[k] for k in keys if k in h}))  # once, not once per process
    last = {k: v for k, v in (history[-1] if history else {}).items() if k in keys}
    history_path = f"{cem_args.output_dir}/cem_history.json"
    print_main("\n".join(summary_lines(last, cem_args.output_dir, history_path)))
    print_main(f"Plot: {cem_args.output_dir}/cem_history.png")
    return 0

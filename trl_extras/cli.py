"""The ``trl-extras`` command line: ``trl-extras <command> [--flags] [--config recipe.yaml]``.

Like the ``trl`` CLI, each command parses dataclasses with ``trl.TrlParser`` (flags, or a YAML recipe through
``--config``, flags winning over the file). Commands are registered here by module path and imported only when
run, so ``trl-extras --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module exposing `main(argv: list[str]) -> int | None`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("trl_extras.scripts.demo", "Run the whole alignment pipeline on the built-in testbed (tiny models, CPU)."),
    "pipeline": ("trl_extras.scripts.pipeline", "Run the pipeline stage by stage from a recipe (real models, resumable)."),
    "testbed": ("trl_extras.scripts.testbed", "Build the testbed's SFT policy and datasets into a directory."),
    "reward-two-stage": ("trl_extras.scripts.reward_two_stage", "Train a reward model on dirty pairs, then on clean pairs."),
    "reward-filter": ("trl_extras.scripts.reward_filter", "Train, drop the easiest pairs, retrain a reward model."),
    "reward-ensemble": ("trl_extras.scripts.reward_ensemble", "Train K reward models (or K LoRA adapters) as an ensemble."),
    "ppo": ("trl_extras.scripts.ppo", "PPO with a separate value model, advantage normalization and exact KL."),
    "grpo-exact-kl": ("trl_extras.scripts.grpo_exact_kl", "TRL's GRPO with an exact full-vocabulary KL penalty."),
    "cem": ("trl_extras.scripts.cem", "Cross-entropy method: sample N, keep the best by reward, fine-tune; repeat."),
    "sft-reward-es": ("trl_extras.scripts.sft_reward_es", "SFT with reward-based early stopping on holdout prompts."),
    "sbs": ("trl_extras.scripts.sbs", "Side-by-side evaluation of two models with a binomial test."),
    "synth-pairs": ("trl_extras.scripts.synth_pairs", "Synthesize DPO preference pairs with a reward model."),
    "iterate": ("trl_extras.scripts.iterate", "Rounds of RL → compare with the baseline → label (judge or people) → refresh the RM."),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: trl-extras <command> [options] [--config recipe.yaml]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `trl-extras <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"trl-extras {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"trl-extras: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            print(f"trl-extras: command {command!r} is not available in this version.", file=sys.stderr)
            return 2
        raise
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

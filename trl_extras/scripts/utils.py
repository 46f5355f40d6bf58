"""Helpers shared by the subcommands: TrlParser parsing with ``--config``, evaluation / preference splits."""

from __future__ import annotations

import sys

from ..utils.data import MissingSplitError, load_dataset_from_spec

__all__ = ["MissingSplitError", "load_dataset_from_spec", "load_eval_split", "load_preference_split", "parse_args"]


#: Flags a subcommand used to take, and their new names: an old flag is refused with the new name in the message.
#: ``generation_batch_size`` meant the generate() chunk size here, while in TRL it means completions per rollout batch.
RENAMED_FLAGS = {"generation_batch_size": "generation_chunk_size"}


def parse_args(dataclass_types, argv: list[str] | None, prog: str):
    """Parse ``argv`` into ``dataclass_types`` with ``trl.TrlParser`` (supports ``--config recipe.yaml``).

    Without a terminal (a log file) ``disable_tqdm`` defaults to True — the Trainer then prints one line per log
    (``PrinterCallback``) instead of bar frames — and the libraries' own bars are off; a recipe or flag still wins."""
    from trl import TrlParser

    from ..utils.progress import disable_tqdm_default, quiet_library_bars

    parser = recipe_parser(TrlParser)(dataclass_types, prog=f"trl-extras {prog}", **help_kwargs(prog))  # strict recipes
    apply_help_overrides(parser, prog)
    quiet_library_bars()
    if disable_tqdm_default() and any(a.dest == "disable_tqdm" for a in parser._actions):
        parser.set_defaults(disable_tqdm=True)  # below the recipe's values and the flags (TrlParser's order)
    old = sys.argv
    try:
        sys.argv = [f"trl-extras {prog}", *(argv or [])]
        *parsed, unknown = parser.parse_args_and_config(return_remaining_strings=True)
        if unknown:  # argparse's own message and exit code 2, naming the flag (TrlParser raises a bare ValueError)
            for item in map(str, unknown):
                name = item.lstrip("-").split("=")[0]
                if name in RENAMED_FLAGS:
                    parser.error(f"--{name} was renamed --{RENAMED_FLAGS[name]} (sequences per generate() call)")
            parser.error(f"unrecognized arguments (flags or recipe keys): {' '.join(map(str, unknown))}")
        return tuple(parsed)
    finally:
        sys.argv = old


def load_recipe(path: str) -> dict:
    """A recipe's YAML mapping, read strictly: a duplicate key (YAML silently keeps the last one), an alias
    (``*name``: a few lines of them expand to gigabytes, the "billion laughs") and an ``env:`` entry setting the
    crash-test hook (:data:`trl_extras.utils.atomic.KILL_ENV`) raise ``ValueError`` naming the line."""
    import yaml

    from ..utils.atomic import KILL_ENV

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ValueError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                 "supported in recipes; write the value out")  # fmt: skip
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise ValueError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (YAML would keep only "
                                     "the last value)")  # fmt: skip
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"must contain a YAML mapping, got {type(config).__name__}")
    env = config.get("env") or {}
    if isinstance(env, dict) and KILL_ENV in env:
        raise ValueError(f"env: {KILL_ENV} is the crash-test hook of the test suite; a recipe cannot set it")
    if "output_dir" in config and config["output_dir"] in (None, ""):
        shown = "null" if config["output_dir"] is None else "''"
        raise ValueError(f"output_dir: {shown} is not a directory; give a path (or leave the key out)")
    return config


def recipe_parser(parser_cls):
    """``parser_cls`` (``trl.TrlParser``) whose ``--config`` recipe goes through :func:`load_recipe` first, whose
    recipe values for list fields may be a single string (``reward_model_path: out/rm`` is ``[out/rm]``, not its
    characters), and which refuses an empty ``--output_dir``. Errors exit like argparse's, naming the file."""

    class RecipeParser(parser_cls):
        def parse_args_and_config(self, args=None, *pos, **kwargs):
            argv = list(args) if args is not None else sys.argv[1:]
            if "--config" in argv and argv.index("--config") + 1 < len(argv):
                path = argv[argv.index("--config") + 1]
                try:
                    load_recipe(path)
                except (OSError, ValueError) as err:
                    self.error(f"--config {path}: {err}")
            output = super().parse_args_and_config(args, *pos, **kwargs)
            for parsed in output:
                if getattr(parsed, "output_dir", None) == "":
                    self.error("--output_dir '' is not a directory; give a path")
            return output

        def set_defaults_with_config(self, **config):
            list_fields = {a.dest for a in self._actions if a.nargs in ("+", "*")}
            config = {k: [v] if k in list_fields and isinstance(v, str) else v for k, v in config.items()}
            return super().set_defaults_with_config(**config)

    return RecipeParser


def load_eval_split(name: str, config: str | None, split: str | None, flag: str = "--dataset_test_split"):
    """The evaluation split, or None -- with a message -- when the dataset has no such split: a local single-split
    file (``x.jsonl`` loads as one ``train`` split) then just works without evaluation."""
    if not split:
        return None
    try:
        return load_dataset_from_spec(name, config, split)
    except MissingSplitError as err:
        print(f"trl-extras: {err} Evaluation skipped (name a split with {flag} NAME, or {flag} '' to silence this).",
              file=sys.stderr)  # fmt: skip
        return None


def load_preference_split(name: str, config: str | None, split: str | None, flag: str = "--dataset_name"):
    """A preference split, checked by the package's one pair validator with the file/split named in errors."""
    from ..rewards.pairs import validate_preference_dataset

    data = load_dataset_from_spec(name, config, split)
    validate_preference_dataset(data, f"{flag} {name!r} (split {split or 'train'!r})")
    return data


def report_metrics(metrics: dict, output_dir: str, filename: str, should_save: bool = True, printer=print,
                   printed: dict | None = None, summary: list[str] | None = None) -> dict:  # fmt: skip
    """The subcommands' one ending: write ``metrics`` as JSON to ``output_dir/filename`` (atomically, when
    ``should_save``: the main process) and print the ``summary`` lines (a human summary, see
    :func:`summary_lines`), or, without one, ``printed`` (default: ``metrics``) as JSON."""
    import json
    import os

    if should_save:
        from ..utils.atomic import atomic_write_json

        os.makedirs(output_dir, exist_ok=True)
        atomic_write_json(os.path.join(output_dir, filename), metrics, default=str)
    if summary is not None:
        printer("\n".join(summary))
    else:
        printer(json.dumps(metrics if printed is None else printed, indent=2, default=str))
    return metrics


def save_evaluate_report(trainer, output_dir: str, filename: str, extra: dict | None = None,
                         dataset_name: str | None = None) -> dict:
    """Save the model (and tokenizer) and its model card naming ``dataset_name`` (or push both with
    ``push_to_hub``, see :func:`~trl_extras.scripts.model_card.write_model_card`), evaluate on the trainer's eval set
    when it has one (``final_eval``), then :func:`report_metrics` ``global_step``, ``extra``, the last logged value
    of every metric (``final_metrics``, from ``trainer.state.log_history``) and the evaluation, printing a short
    human summary: the ending shared by the trainer subcommands."""
    import os

    from .model_card import write_model_card

    trainer.save_model(output_dir)
    metrics = {"global_step": trainer.state.global_step, **(extra or {}),
               "final_metrics": final_metrics(trainer.state.log_history)}  # fmt: skip
    if trainer.eval_dataset is not None:
        metrics["final_eval"] = trainer.evaluate()
    write_model_card(trainer, trainer.args, dataset_name, metrics=metrics)
    flat = {**metrics["final_metrics"], **metrics.get("final_eval", {})}
    summary = summary_lines(flat, output_dir, os.path.join(output_dir, filename))
    return report_metrics(metrics, output_dir, filename, trainer.args.should_save, trainer.accelerator.print,
                          summary=summary)


# ---------------------------------------------------------------------------------------------------------------
# One CLI vocabulary: rewards, testbed defaults, deprecated flags, --help, the final summary
# ---------------------------------------------------------------------------------------------------------------
REWARD_FUNCS_HELP = (
    "Rewards, in one list: reward-model paths or Hub ids (a full reward model, a LoRA adapter folder), "
    "RewardEnsemble folders, import paths 'module:function' (a GRPO-style reward function; modules are found on "
    "sys.path and in the current folder) and the testbed's 'gold' / 'heuristic'. Several are summed with "
    "--reward_weights."
)
REWARD_WEIGHTS_HELP = "One weight per --reward_funcs entry (default: all 1.0)."


def is_testbed_spec(value) -> bool:
    """``value`` names the testbed ('testbed', 'testbed:...', or a testbed reward name)."""
    from ..testbed.names import TESTBED_REWARDS

    if isinstance(value, (list, tuple)):
        return any(is_testbed_spec(v) for v in value)
    return isinstance(value, str) and (value.lower() == "testbed" or value.lower().startswith("testbed:")
                                       or value in TESTBED_REWARDS)  # fmt: skip


def testbed_asked(data: dict, named: tuple = ()) -> bool:
    """Whether the testbed may fill in what is missing: the user gave none of the ``data`` flags
    (``{"--flag": value}``), or named the testbed in one of them or in ``named`` (rewards, models).

    The rule of every subcommand: a testbed default stands in only when the user asked for the testbed; with the
    user's own data a missing reward, model or dataset is an error naming its flag (:func:`require`)."""
    given = [v for v in data.values() if v not in (None, "", [])]
    return not given or is_testbed_spec(given) or is_testbed_spec(list(named))


def require(value, flag: str, prog: str, what: str, own_data: bool = True):
    """``value``, or a ``ValueError`` naming ``flag``; ``own_data``: the reason is that the testbed does not fill
    it in for the user's own data (else the flag is always required)."""
    if value in (None, "", []):
        if not own_data:
            raise ValueError(f"trl-extras {prog}: {flag} is required ({what}).")
        raise ValueError(f"trl-extras {prog}: {flag} is required with your own data ({what}). The testbed stands "
                         "in only when asked for: no data flags at all, or 'testbed' / a testbed reward named.")  # fmt: skip
    return value


def testbed_reward_name(flag: str):
    """``convert`` for :func:`deprecated_reward_flags` of an old flag that took only the testbed's reward names."""

    def convert(value):
        from ..testbed.names import TESTBED_REWARDS

        if value not in TESTBED_REWARDS:
            raise ValueError(f"{flag} must be one of {TESTBED_REWARDS}, got {value!r} (deprecated flag: use "
                             "--reward_funcs, which also takes model paths and module:function).")  # fmt: skip
        return [value]

    return convert


def deprecated_reward_flags(args, prog: str, old_flags: dict, target: str = "reward_funcs") -> None:
    """Fold deprecated reward flags into ``args.<target>`` (a list), each with a ``FutureWarning`` naming the new
    spelling. ``old_flags``: ``{old_field: convert}``; ``convert(value)`` gives the entries to add (or ``None``
    to only warn, e.g. a flag that is no longer needed). Old flags still work; the new one is what --help shows."""
    import warnings

    if isinstance(getattr(args, target, None), str):  # a recipe's `reward_funcs: out/rm` (a scalar, not a list)
        setattr(args, target, [getattr(args, target)])
    for old, convert in old_flags.items():
        value = getattr(args, old, None)
        if value in (None, False, "", []):
            continue
        added = convert(value) if convert is not None else None
        example = " ".join(map(str, added)) if added else None
        hint = f"use --{target} {example}" if example else f"--{target} detects this by itself"
        warnings.warn(f"trl-extras {prog}: --{old} is deprecated; {hint}.", FutureWarning, stacklevel=2)
        if added:
            setattr(args, target, [*(getattr(args, target, None) or []), *added])
        setattr(args, old, None if not isinstance(value, bool) else False)


def _path_reward(path: str, flag: str):
    """A reward-model path checked before any model loads, returned as the trainers take it (the reward contract,
    ``trl_extras.rewards.source.load_reward``, loads full models, LoRA adapter folders and RewardEnsemble folders)."""
    import os

    from ..modeling.checks import check_reward_checkpoint
    from ..rewards.ensemble import MANIFEST_NAME, interrupted_ensemble_dir
    from ..utils.validation import check_model_path

    if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        return path
    if os.path.isdir(path) and interrupted_ensemble_dir(path):
        raise ValueError(
            f"{flag} {path} holds reward-ensemble members but no {MANIFEST_NAME}: its training or calibration was "
            "interrupted. Rerun `trl-extras reward-ensemble` with the same settings (finished members are reused)."
        )
    check_model_path(path, flag)
    check_reward_checkpoint(path, flag)  # a causal LM would get a random score head
    return path


def resolve_reward_funcs(specs, flag: str = "--reward_funcs", task: str = "sort_digits") -> list:
    """The CLI's one reward resolver: each entry of ``specs`` → what the trainers accept.

    ``gold`` / ``heuristic`` → the testbed task's reward functions; ``module:function`` → the imported callable
    (from sys.path or the current folder, :func:`~trl_extras.utils.imports.import_object`); anything else → a
    model path string (full reward model, LoRA adapter folder, Hub id), a RewardEnsemble folder loaded as one."""
    from ..testbed.names import TESTBED_REWARDS
    from ..utils.imports import resolve_reward_spec

    specs = [specs] if isinstance(specs, str) else list(specs or [])
    named = None
    if any(s in TESTBED_REWARDS for s in specs):
        from ..testbed.names import testbed_rewards

        named = testbed_rewards(task)
    out = []
    for spec in specs:
        reward = resolve_reward_spec(spec, named, flag)
        out.append(_path_reward(reward, flag) if isinstance(reward, str) else reward)
    return out


def check_reward_weights(weights, num_funcs: int, flag: str = "--reward_weights") -> None:
    if weights is not None and len(weights) != num_funcs:
        raise ValueError(f"{flag}: {len(weights)} weight(s) {list(weights)} for {num_funcs} --reward_funcs entries; "
                         "give one weight per reward (or none: all 1.0).")  # fmt: skip


def weighted_reward(rewards: list, weights=None):
    """One reward for a consumer that takes a single one: itself when alone and unweighted; else a GRPO-style
    callable returning the weighted sum (named ``weighted_reward``)."""
    if len(rewards) == 1 and (weights is None or list(weights) == [1.0]):
        return rewards[0]
    from ..rewards.functions import RewardFunctions, WeightedReward

    return WeightedReward(RewardFunctions(rewards, reward_weights=weights))


def resolve_model_name(name, flag: str):
    """A model flag's value: a testbed name (``testbed``, ``testbed:tiny``, ``testbed:smollm2``) → its cached
    local path; anything else is checked as a path (a missing local folder names ``flag``) and returned."""
    from ..testbed.names import is_testbed_model, testbed_model_path
    from ..utils.validation import check_model_path

    if isinstance(name, str) and (is_testbed_model(name) or name.lower().startswith("testbed:")):
        return testbed_model_path(name)
    check_model_path(name, flag)
    return name


#: What ``--resume_from_checkpoint`` does in each subcommand (replaces TrainingArguments' generic help).
RESUME_HELP = {
    "ppo": "Continue a stopped run: 'true' = the latest checkpoint-N under output_dir, or a checkpoint folder. "
           "Restores policy, value model, optimizers, schedulers, RNG and the data order.",
    "cem": "CEM resumes by itself from output_dir (finished rounds are loaded, an interrupted round's saved "
           "generations reused): 'false' starts over (existing rounds are overwritten); 'true' or unset resumes.",
    "reward-two-stage": "Continue a stopped run: 'true' = the latest checkpoint-N under output_dir, or a checkpoint "
                        "folder (a finished stage 1 is not retrained).",
}


def help_kwargs(prog: str) -> dict:
    """``description`` (the subcommand module's docstring: one paragraph and example commands, as ``trl <cmd>
    --help`` starts) and a formatter keeping its layout, for ``TrlParser``."""
    import argparse
    import importlib

    from ..cli import COMMANDS

    doc = None
    if prog in COMMANDS:
        doc = importlib.import_module(COMMANDS[prog][0]).__doc__

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    # a one-line usage: argparse's own lists every flag (hundreds of lines for a TRL config) before the description
    return {"usage": f"trl-extras {prog} [--config recipe.yaml] [--flag value ...]",
            "description": (doc or "").strip() or None, "formatter_class": Formatter}  # fmt: skip


def apply_help_overrides(parser, prog: str) -> None:
    """Subcommand-specific help of inherited flags (``--resume_from_checkpoint``)."""
    for action in parser._actions:
        if action.dest == "resume_from_checkpoint" and prog in RESUME_HELP:
            action.help = RESUME_HELP[prog]


def final_metrics(log_history: list[dict]) -> dict:
    """The last logged value of every metric (train and eval) in a Trainer's ``state.log_history``."""
    out: dict = {}
    for entry in log_history or []:
        for key, value in entry.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = value
    return out


# the numbers a human reads first, in this order: (label, exact keys tried first, then a substring of a key)
_SUMMARY_KEYS = (
    ("reward", ("reward", "reward_mean", "eval_reward", "eval_reward_mean"), None),
    ("KL", ("kl/exact", "exact_kl", "objective/kl", "kl"), None),
    ("gold", ("gold_mean", "eval_gold_mean", "eval_reward_gold"), "gold"),
    ("eval accuracy", ("eval_accuracy",), None),
    ("eval loss", ("eval_loss",), None),
    ("train loss", ("train_loss", "loss"), None),
)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_lines(metrics: dict, output_dir: str, metrics_path: str | None = None) -> list[str]:
    """A short human summary: the headline numbers found in ``metrics`` (flat), where the model and metrics went."""
    parts = []
    for label, keys, fragment in _SUMMARY_KEYS:
        found = next((k for k in keys if _number(metrics.get(k))), None)
        if found is None and fragment:
            found = next((k for k, v in metrics.items() if fragment in k and k.endswith("/mean") and _number(v)), None)
        if found is not None:
            parts.append(f"{label} {metrics[found]:.4g} ({found})")
    lines = ["Final: " + ", ".join(parts)] if parts else []
    lines.append(f"Model saved to {output_dir}")
    if metrics_path:
        lines.append(f"Metrics saved to {metrics_path}")
    return lines


def load_pairs(name: str, config: str | None = None, split: str | None = "train"):
    """A preference dataset from a Hub name, a ``save_to_disk`` directory or a data file (split ``split``)."""
    return load_dataset_from_spec(name, config, split)


def resolve_model(model_args, training_args, testbed: bool = True, prog: str = "") -> str:
    """Model path (the testbed SFT policy for 'testbed'/unset, SmolLM2 for 'testbed:smollm2') and TRL-style
    ``model_init_kwargs``. Unset on the user's own data (``testbed`` False) is an error naming the flag."""
    name = model_args.model_name_or_path
    if name in (None, ""):
        # the testbed's policy stands in only for a testbed run (``testbed``: see testbed_asked)
        name = "testbed" if testbed else require(name, "--model_name_or_path", prog, "the model to train")
    name = resolve_model_name(name, "--model_name_or_path")  # testbed / testbed:smollm2 -> their cached paths
    kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    training_args.model_init_kwargs = {**kwargs, **(training_args.model_init_kwargs or {})}
    return name


def resume_arg(value):
    """TrainingArguments keeps ``resume_from_checkpoint`` as a string: 'true' means the latest checkpoint."""
    if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
        return True
    return value or None

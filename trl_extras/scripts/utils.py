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

    parser = recipe_parser(TrlParser)(dataclass_types, prog=f"trl-extras {prog}")  # strict recipes (load_recipe)
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
                   printed: dict | None = None) -> dict:  # fmt: skip
    """The subcommands' one ending: write ``metrics`` as JSON to ``output_dir/filename`` (atomically, when
    ``should_save``: the main process) and print ``printed`` (default: ``metrics``) as JSON."""
    import json
    import os

    if should_save:
        from ..utils.atomic import atomic_write_json

        os.makedirs(output_dir, exist_ok=True)
        atomic_write_json(os.path.join(output_dir, filename), metrics, default=str)
    printer(json.dumps(metrics if printed is None else printed, indent=2, default=str))
    return metrics


def save_evaluate_report(trainer, output_dir: str, filename: str, extra: dict | None = None,
                         dataset_name: str | None = None) -> dict:
    """Save the model (and tokenizer) and its model card naming ``dataset_name`` (or push both with
    ``push_to_hub``, see :func:`~trl_extras.scripts.model_card.write_model_card`), evaluate on the trainer's eval set
    when it has one (``final_eval``), then :func:`report_metrics` ``extra`` + the evaluation: the ending shared by
    the trainer subcommands."""
    from .model_card import write_model_card

    trainer.save_model(output_dir)
    write_model_card(trainer, trainer.args, dataset_name)
    metrics = dict(extra or {})
    if trainer.eval_dataset is not None:
        metrics["final_eval"] = trainer.evaluate()
    return report_metrics(metrics, output_dir, filename, trainer.args.should_save, trainer.accelerator.print)

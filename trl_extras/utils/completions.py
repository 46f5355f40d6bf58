"""``log_completions`` for PPO and CEM, the way TRL's ``GRPOTrainer`` does it: the sampled (prompt, completion,
rewards) rows are printed as a rich table (TRL's ``print_prompt_completions_sample``), logged as a table to the
``report_to`` backends that have tables (wandb, trackio) and, when a folder is given, written as
``completions_{step:05d}.parquet`` (GRPO writes ``output_dir/completions/``).

Config fields, with GRPOConfig's names and meanings: ``log_completions``, ``num_completions_to_print``,
``log_unique_prompts``. The trainers gather the rows of every process and hand them to the main process's
:class:`CompletionLog`.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from pathlib import Path

# help texts of the config fields (GRPOConfig's, adapted where the trainer differs)
LOG_COMPLETIONS_HELP = (
    "Whether to log a sample of (prompt, completion) pairs every `logging_steps` steps. If `rich` is installed, it "
    "prints the sample. If `wandb` and/or `trackio` logging is enabled, it logs it to `wandb` and/or `trackio`."
)
NUM_COMPLETIONS_TO_PRINT_HELP = "Number of completions to print with `rich`. If `None`, all completions are logged."
LOG_UNIQUE_PROMPTS_HELP = (
    "Whether to log unique prompts. If `True`, only unique prompts are logged. If `False`, all prompts are logged."
)


def logging_backends(report_to) -> list:
    """The ``report_to`` integrations that take tables: the ``wandb`` module (with an active run) and ``trackio``."""
    report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
    backends = []
    if "wandb" in report_to:
        try:
            import wandb
        except ImportError:
            wandb = None
        if wandb is not None and getattr(wandb, "run", None) is not None:
            backends.append(wandb)
    if "trackio" in report_to:
        try:
            import trackio
        except ImportError:
            trackio = None
        if trackio is not None:
            backends.append(trackio)
    return backends


class CompletionLog:
    """Rows gathered since the last log: ``add`` them after each generation, ``flush`` at each log.

    Args:
        maxlen: rows kept at most (the oldest are dropped), like GRPO's ``generation_batch_size`` deques.
        num_completions_to_print: rows printed (a random sample; ``None``: all).
        log_unique_prompts: the backends' table keeps the first row of each prompt only.
        report_to: ``TrainingArguments.report_to``.
        parquet_dir: folder for ``completions_{step:05d}.parquet`` (``None``: no file).
    """

    def __init__(self, maxlen: int | None = None, num_completions_to_print: int | None = None,
                 log_unique_prompts: bool = False, report_to=None, parquet_dir: str | Path | None = None):
        self.num_completions_to_print = num_completions_to_print
        self.log_unique_prompts = log_unique_prompts
        self.report_to = report_to
        self.parquet_dir = Path(parquet_dir) if parquet_dir is not None else None
        self.prompts: deque = deque(maxlen=maxlen)
        self.completions: deque = deque(maxlen=maxlen)
        self.rewards: dict[str, deque] = defaultdict(lambda: deque(maxlen=maxlen))
        self.advantages: deque = deque(maxlen=maxlen)
        self.extra: dict[str, deque] = defaultdict(lambda: deque(maxlen=maxlen))

    @classmethod
    def from_args(cls, args, maxlen: int | None = None, parquet_dir: str | Path | None = None) -> CompletionLog:
        """From a config with ``num_completions_to_print`` / ``log_unique_prompts`` / ``report_to``."""
        return cls(maxlen=maxlen, num_completions_to_print=getattr(args, "num_completions_to_print", None),
                   log_unique_prompts=getattr(args, "log_unique_prompts", False),
                   report_to=getattr(args, "report_to", None), parquet_dir=parquet_dir)

    def __len__(self) -> int:
        return len(self.prompts)

    def add(self, prompts: list, completions: list, rewards: dict[str, list[float]],
            advantages: list[float] | None = None, extra: dict[str, list] | None = None) -> None:
        """Append rows: ``N`` prompts and completions, each reward (and extra) column with ``N`` values."""
        n = len(prompts)
        columns = {"completions": completions, **{f"reward {k}": v for k, v in rewards.items()},
                   **{f"extra {k}": v for k, v in (extra or {}).items()}}
        if advantages is not None:
            columns["advantages"] = advantages
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"CompletionLog.add: {name} has {len(values)} values for {n} prompts.")
        self.prompts.extend(prompts)
        self.completions.extend(completions)
        for name, values in rewards.items():
            self.rewards[name].extend(float(v) for v in values)
        if advantages is not None:
            self.advantages.extend(float(a) for a in advantages)
        for name, values in (extra or {}).items():
            self.extra[name].extend(values)

    def table(self, step: int) -> dict[str, list]:
        """The rows as columns: ``step``, ``prompt``, ``completion``, one column per reward, ``advantage`` (when
        given), the extra columns (GRPO's table layout)."""
        n = len(self.prompts)
        table = {"step": [step] * n, "prompt": list(self.prompts), "completion": list(self.completions)}
        table.update({name: list(values) for name, values in self.rewards.items()})
        if len(self.advantages) == n and n:
            table["advantage"] = list(self.advantages)
        table.update({name: list(values) for name, values in self.extra.items()})
        return table

    def flush(self, step: int) -> dict[str, list] | None:
        """Print, log and write the rows gathered since the last flush, then forget them. Returns the table
        (``None`` when there was nothing to log)."""
        if not self.prompts:
            return None
        table = self.table(step)
        self._print(step)
        backends = logging_backends(self.report_to)
        if backends or self.parquet_dir is not None:
            import pandas as pd

            df = pd.DataFrame({k: [_plain(v) for v in values] if k in ("prompt", "completion") else values
                               for k, values in table.items()})
            if self.parquet_dir is not None:
                self.parquet_dir.mkdir(parents=True, exist_ok=True)
                df.to_parquet(self.parquet_dir / f"completions_{step:05d}.parquet")
            if self.log_unique_prompts:
                df = df[~df["prompt"].astype(str).duplicated()]
            for backend in backends:
                backend.log({"completions": backend.Table(dataframe=df)})
        self.prompts.clear()
        self.completions.clear()
        self.rewards.clear()
        self.advantages.clear()
        self.extra.clear()
        return table

    def _print(self, step: int) -> None:
        from transformers.utils import is_rich_available

        if not is_rich_available():
            return
        from trl.trainer.utils import print_prompt_completions_sample

        state = random.getstate()  # TRL samples the printed rows with `random`: logging must not change the run
        try:
            print_prompt_completions_sample(
                list(self.prompts), list(self.completions), {k: list(v) for k, v in self.rewards.items()},
                list(self.advantages) if len(self.advantages) == len(self.prompts) else None, step,
                self.num_completions_to_print, extra={k: list(v) for k, v in self.extra.items()},
            )
        finally:
            random.setstate(state)


def _plain(value):
    """A conversational prompt/completion (list of messages) as text for tables; strings unchanged."""
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return "\n\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value)
    return value

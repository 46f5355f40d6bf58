"""Progress that reads well on a terminal AND in a log file.

On a terminal (stderr is a tty) long loops show tqdm bars; in a log file (``trl-extras demo > log 2>&1``, a batch job,
CI) bars would write hundreds of carriage-return frames, so loops run silently and the caller prints ONE line per
stage / round / evaluation with :func:`log_line` (``[pipeline] stage ppo: done in 35 s``). ``TRL_EXTRAS_PROGRESS``
overrides the detection: ``bars`` or ``lines``.

Hugging Face ``Trainer`` runs follow the same rule the HF way: :func:`disable_tqdm_default` is the
``TrainingArguments.disable_tqdm`` value to use (``True`` without a terminal, so the Trainer swaps its
``ProgressCallback`` bar for ``PrinterCallback``, one line per log).
"""

from __future__ import annotations

import os
import sys

_ENV = "TRL_EXTRAS_PROGRESS"


def show_bars(stream=None) -> bool:
    """True when progress bars should be drawn: ``TRL_EXTRAS_PROGRESS`` (``bars`` / ``lines``) or, by default,
    whether ``stream`` (stderr, where tqdm writes) is a terminal."""
    mode = os.environ.get(_ENV, "").strip().lower()
    if mode in ("bars", "lines"):
        return mode == "bars"
    if mode:
        raise ValueError(f"{_ENV} must be 'bars' or 'lines', got {mode!r}")
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def disable_tqdm_default() -> bool:
    """``TrainingArguments.disable_tqdm`` for runs we configure: bars on a terminal, ``PrinterCallback`` lines else."""
    return not show_bars()


class _Silent:
    """Stands in for a tqdm bar where none is drawn: iterates, and ignores the bar methods callers use."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self):
        return len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass


def progress_bar(iterable=None, *, desc: str | None = None, total: int | None = None, enabled: bool = True,
                 leave: bool = False, **kwargs):
    """A tqdm bar over ``iterable`` on a terminal (``enabled`` and :func:`show_bars`); else the iterable, silent.

    Callers that want a record in a log file print one :func:`log_line` when the loop is done (or per round)."""
    if enabled and show_bars():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=leave, **kwargs)
    return _Silent(iterable)


def is_main_process() -> bool:
    """Whether this is the main process of an ``accelerate launch`` / torchrun run (``RANK`` and ``LOCAL_RANK`` 0 or
    unset), read from the environment so that it works before any accelerator exists."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def print_main(*args, **kwargs) -> None:
    """``print`` on the main process only: a final summary or history under ``accelerate launch`` is printed once,
    not once per process."""
    if is_main_process():
        print(*args, **kwargs)


def quiet_replica_logs(logger_name: str = "trl_extras") -> None:
    """On processes other than the main one, show only errors from ``logger_name``: the package's warnings and
    notices describe global state (metrics gathered over all processes, shared settings), so every process would
    print the same line. (transformers does the same for its own logger through ``log_level_replica``.)"""
    import logging

    if not is_main_process():
        logging.getLogger(logger_name).setLevel(logging.ERROR)


def log_line(tag: str, message: str) -> None:
    """Print ``[tag] message`` as one line on stdout, flushed (through tqdm on a terminal so open bars stay intact).

    Only the main process prints under ``accelerate launch`` / torchrun (``RANK`` / ``LOCAL_RANK`` other than 0
    stay silent)."""
    if not is_main_process():
        return
    line = f"[{tag}] {message}"
    if show_bars():
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(line, flush=True)


def quiet_library_bars() -> None:
    """Without a terminal, switch off the bars of the libraries underneath through their own switches: ``datasets``
    (``map`` / ``filter``) and ``transformers`` ("Loading weights"; it switches ``huggingface_hub``'s too). On a
    terminal: no-op."""
    if show_bars():
        return
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()

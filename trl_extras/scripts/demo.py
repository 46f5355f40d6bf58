"""``trl-extras demo``: the article's whole pipeline on the built-in testbed with tiny models, on a CPU in minutes.

On the ``sort_hard`` task (the SFT model's greedy answer is its demonstrators' systematic mistake): SFT with
reward-based early stopping → reward model (dirty → clean, easy-pair filtering) → reward ensemble → CEM → PPO on one
fixed RM without KL (over-optimization baseline) → PPO (advantage-normalized, exact KL, ensemble uncertainty penalty)
→ the same PPO with the reward ensemble refreshed on its own answers → DPO on reward-synthesized pairs → side-by-side
evaluation of every model against the SFT model with binomial tests, judged by the gold reward, sampled and greedy.

examples:
  trl-extras demo
  trl-extras demo --output_dir outputs/demo --seed 1
"""

from __future__ import annotations

#: The demo's settings before the user's flags (a later flag wins in argparse): the sort_hard task, whose SFT
#: model's greedy answer is the demonstrators' systematic wrong mode, so that an optimizer can beat it only by learning.
DEMO_ARGS = ["--output_dir", "outputs/demo", "--task", "sort_hard"]


def main(argv=None) -> int:
    from ..utils.offline import use_offline_env

    use_offline_env()  # before any Hugging Face import
    import logging
    import time
    import warnings

    warnings.filterwarnings("ignore")
    from ..pipeline.config import PipelineConfig
    from .pipeline import run_and_report
    from .utils import parse_args

    (config,) = parse_args([PipelineConfig], [*DEMO_ARGS, *(argv or [])], "demo")
    if config.prompt_dataset != "testbed":
        raise SystemExit("`trl-extras demo` runs on the built-in testbed; use `trl-extras pipeline` for real models.")
    import datasets
    from transformers import trainer_callback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # The demo shows one progress bar per training run and the final table; the per-step metric dicts that
    # Trainer prints go to each stage's result.json and the report instead of the terminal.
    trainer_callback.ProgressCallback.on_log = lambda self, *args, **kwargs: None
    trainer_callback.PrinterCallback.on_log = lambda self, *args, **kwargs: None
    logging.getLogger("trl").setLevel(logging.ERROR)
    start = time.perf_counter()
    run_and_report(config, title=f"trl-extras demo: the alignment pipeline on the {config.task} testbed (seed {config.seed})")
    print(f"Total: {time.perf_counter() - start:.0f} s")
    return 0

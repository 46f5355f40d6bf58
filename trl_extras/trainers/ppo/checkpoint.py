"""PPOTrainer checkpoints on disk: the extra files (value model, PPO state) and which checkpoint is complete.

``ppo_state.json`` is written last and lists every file with its size, so a checkpoint is complete exactly when
the marker exists and every listed file has its size; resuming picks the newest complete one."""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)

VALUE_STATE_FILE = "value_model.safetensors"
PPO_STATE_FILE = "ppo_state.json"


def checkpoint_problem(path: str) -> str | None:
    """Why ``path`` is not a complete PPOTrainer checkpoint (None when it is): the completion marker
    ``ppo_state.json`` is missing or unreadable, or a file it lists is missing or has another size (truncated)."""
    state_file = os.path.join(path, PPO_STATE_FILE)
    if not os.path.isdir(path):
        return "no such directory"
    if not os.path.isfile(state_file):
        return f"no {PPO_STATE_FILE} (written last: the checkpoint was not finished, or is not a PPOTrainer one)"
    try:
        with open(state_file) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        return f"{PPO_STATE_FILE} is not valid JSON ({err})"
    for name, size in (state.get("files") or {}).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} is truncated or changed ({os.path.getsize(file)} bytes, {size} when saved)"
    trainer_state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(trainer_state):
        return "trainer_state.json is missing"
    try:
        with open(trainer_state) as f:
            json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        return f"trainer_state.json is not valid JSON ({err})"
    return None


def latest_complete_checkpoint(output_dir: str) -> str:
    """The newest complete ``checkpoint-N`` in ``output_dir``; newer incomplete ones are skipped with a warning."""
    import re
    import warnings

    pattern = re.compile(r"^checkpoint-(\d+)$")
    found = sorted(
        ((int(m.group(1)), name) for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
         if (m := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))),
        reverse=True,
    )  # fmt: skip
    for _, name in found:
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"Skipping incomplete checkpoint {path}: {problem}. Resuming from an older one.", stacklevel=3)
        logger.warning("Skipping incomplete checkpoint %s: %s", path, problem)
    raise ValueError(f"No complete checkpoint in output directory {output_dir} to resume from.")

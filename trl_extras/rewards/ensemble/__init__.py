"""Reward-model ensembles with an uncertainty penalty (Coste et al. 2023; the article's "subtract the variance").

One module per concern:

* :mod:`.scores`: ``EnsembleScores``, the K members' scores and their reductions;
* :mod:`.lora_tail`: K LoRA adapters on one frozen base, scored "trunk once, K tails";
* :mod:`.model`: ``RewardEnsemble`` (scoring, calibration, a TRL reward function as is);
* :mod:`.io`: save / load (``ensemble_manifest.json``);
* :mod:`.training`: ``train_reward_ensemble``.
"""

from .io import MANIFEST_FORMAT, MANIFEST_NAME, MEMBER_MARKER, interrupted_ensemble_dir
from .lora_tail import last_non_pad_index, lora_full_pass_scores, lora_tail_scores, lora_tail_start
from .model import RewardEnsemble
from .scores import EnsembleScores
from .training import train_reward_ensemble

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MEMBER_MARKER",
    "EnsembleScores",
    "RewardEnsemble",
    "interrupted_ensemble_dir",
    "last_non_pad_index",
    "lora_full_pass_scores",
    "lora_tail_scores",
    "lora_tail_start",
    "train_reward_ensemble",
]

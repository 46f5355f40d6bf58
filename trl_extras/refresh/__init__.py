"""The article's "second way" against Goodhart: refresh the reward model on comparisons of the policy's own answers."""

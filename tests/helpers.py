"""Shared test helpers: training arguments that run anywhere (CPU, fp32, no hub, no saving, no reporting)."""

CPU_TRAINING_ARGS = dict(
    use_cpu=True,
    bf16=False,  # TRL configs default to bf16=True
    report_to="none",
    save_strategy="no",
    gradient_checkpointing=False,  # TRL configs default to gradient checkpointing
    logging_steps=1,
    disable_tqdm=True,
)


def cpu_config(config_cls, output_dir, /, **overrides):
    """``config_cls(output_dir=..., **CPU_TRAINING_ARGS, **overrides)`` — overrides (``output_dir`` too) win."""
    output_dir = overrides.pop("output_dir", output_dir)
    return config_cls(output_dir=str(output_dir), **{**CPU_TRAINING_ARGS, **overrides})

"""The ``trl-extras`` subcommands, one module per command (TRL's ``trl/scripts/`` style); each exposes
``main(argv) -> int``. :mod:`trl_extras.cli` dispatches to them; :mod:`.utils` holds what they share."""

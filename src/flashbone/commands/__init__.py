"""One module per ``flashbone`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""

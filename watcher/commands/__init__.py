"""One module per ``specwatch`` sub-command; each has ``add_parser(subparsers)`` and ``run(args, env)``."""

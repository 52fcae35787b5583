"""One module per `python -m bench` command: each defines add_parser(subparsers) and run(args)."""

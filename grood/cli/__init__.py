"""The command line: `grood <command>` (and `python -m grood`), one module per command."""

"""The one exception of a refused command: bad input, or a folder that cannot be used as asked.

bench/cli.py turns it, like the input errors of loaders/ and reports/ (DatasetError, GateError,
CompareError: all ValueErrors), into `error: <message>` and exit code 2, so that exit code 1
keeps one meaning: a variant (a doctor check, a loader, a gated case) failed.
"""


class UsageError(ValueError):
    """Bad input or a refused folder; the message is the line the user sees, naming the option or file."""

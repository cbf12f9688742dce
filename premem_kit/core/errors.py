"""The kit's one error base class: bad input or state that the user can fix.

Every such error's message names the file, line, key or option and what was expected; the scripts
print it and exit with status 2 (cli.py). Anything else is a bug and keeps its traceback.
"""


class KitError(Exception):
    """Bad input or state the user can fix; the message says what and what to do."""


def warn(msg: str) -> None:
    """A warning for the person at the terminal (stderr), for things that change results."""
    import sys

    print(f"warning: {msg}", file=sys.stderr)

"""One error type for mistakes a user can fix.

A `BenchError` carries a message that names the file, line or field at fault and says what to do.
The command line prints it without a traceback and exits with status 2; anything else is a bug and
keeps its traceback.
"""


class BenchError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C caught where the work kept so far is known: its message says what is on disk and will
    be reused (the command line prints it instead of its generic line)."""


def where(path, line: int | None = None) -> str:
    """`path:line` prefix for error messages (line is 1-based)."""
    return f"{path}:{line}" if line is not None else str(path)

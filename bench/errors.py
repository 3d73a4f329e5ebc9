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


def closest(word: str, choices) -> str | None:
    """The one of `choices` that `word` most likely misspells (difflib's ratio 0.6 or more), or None."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices, hint: str = "") -> str:
    """" (did you mean 'x'?)" when `word` is close to one of `choices` (a misspelt name), else ""; `hint`
    is added after the closest choice (a metric's cutoff)."""
    found = closest(word, choices)
    return f" (did you mean {found + hint!r}?)" if found else ""

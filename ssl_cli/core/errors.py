"""Errors that come from the user's input, not from a bug.

The command line turns a UserError into one line on stderr and exit code 2, without a traceback.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input: the message says what was wrong and what is allowed."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (whitespace and line breaks collapsed)."""
    return " ".join(str(error).split()) or type(error).__name__

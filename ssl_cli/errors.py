"""Errors that come from the user's input, not from a bug.

The command line turns a UserError into one line on stderr and exit code 2, without a traceback.
"""


class UserError(Exception):
    """Bad input: the message says what was wrong and what is allowed."""

"""The one exception type for bad input: the CLI turns it into a one-line error and exit code 2."""


class MemlawError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it.

    >>> str(MemlawError("rank must be positive, got 0"))
    'rank must be positive, got 0'
    """

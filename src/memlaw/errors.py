"""The one exception type for bad input, the number checks that raise it, and the one-line
message of every failure that is not a bug (:func:`expected_failure`).

The CLI prints that line as ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import math
import sys


class MemlawError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it.

    >>> str(MemlawError("rank must be positive, got 0"))
    'rank must be positive, got 0'
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): the part a
    one-line error quotes.

    >>> first_line(OSError("disk full\\nwhile writing")), first_line(KeyError())
    ('disk full', 'KeyError')
    """
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_number(
    value: float | None,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """Fail unless ``value`` is a finite number within the bounds; ``name`` is what the user
    typed (an option such as ``--lr``), so the message points at it.

    >>> check_number(0.5, "--tau", low=0, high=1, low_open=True, high_open=True)
    >>> try:
    ...     check_number(float("nan"), "--lr", low=0, low_open=True)
    ... except MemlawError as exc:
    ...     print(exc)
    --lr must be a finite number > 0, got nan
    """
    if value is None and optional:
        return
    wanted = _describe_range(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MemlawError(f"{name} must be a finite number{wanted}, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise MemlawError(f"{name} must be a number{wanted}, got {value:g}")


def check_integer(value: int | None, name: str, *, low: int = 1, optional: bool = False) -> None:
    """Fail unless ``value`` is a whole number ≥ ``low``.

    >>> try:
    ...     check_integer(0, "--steps")
    ... except MemlawError as exc:
    ...     print(exc)
    --steps must be a positive integer, got 0
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        wanted = "a positive integer" if low == 1 else f"an integer ≥ {low}"
        raise MemlawError(f"{name} must be {wanted}, got {value}")


def _describe_range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" within {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '≥'} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '≤'} {high:g}"
    return ""


def expected_failure(exc: BaseException) -> str | None:
    """The one-line message for a failure that is the input's or the environment's fault, or
    None for one that is memlaw's (a bug).

    >>> expected_failure(MemlawError("rank must be positive")), expected_failure(KeyError("x"))
    ('rank must be positive', None)
    >>> expected_failure(FileNotFoundError(2, "No such file or directory", "law.json"))
    "No such file or directory: 'law.json'"
    """
    import pickle
    import sqlite3

    if isinstance(exc, MemlawError):
        return str(exc)
    if _is_out_of_memory(exc):
        return (
            f"out of memory ({first_line(exc)}): lower --rank, --batch-size or the data size, "
            "or free memory"
        )
    if isinstance(exc, OSError):
        return _os_error_message(exc)
    if type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        return f"database error: {first_line(exc)}"
    if isinstance(exc, pickle.UnpicklingError):
        return f"refused to load pickle data, which can run code: {first_line(exc)}"
    if type(exc).__name__ == "SafetensorError":
        return f"cannot read a safetensors file (empty, truncated or corrupt): {first_line(exc)}"
    if isinstance(exc, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({first_line(exc)})"
    return None


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _os_error_message(exc: OSError) -> str:
    reason = exc.strerror or first_line(exc)
    if exc.filename is None:
        return reason
    where = f"'{exc.filename}'"
    if exc.filename2 is not None:
        where += f" -> '{exc.filename2}'"
    return f"{reason}: {where}"

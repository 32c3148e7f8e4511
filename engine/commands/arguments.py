"""Argument types for the numeric and file options of the commands.

argparse's `int` and `float` take any number, so `--examples -1` or
`--rate nan` would reach a command and mean nothing sensible there. These
types refuse such a value while the command line is read, before any file
is opened or any service is called, and argparse names the option in its
message: `argument --examples: '-1' is not a whole number of at least 0.`
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["file_name", "positive_number", "whole_number"]


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """Return an argparse type that takes a whole number from `least` to `most`."""
    if most is None:
        wanted = f"a whole number of at least {least}"
    else:
        wanted = f"a whole number from {least} to {most}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}.") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}.")
        return value

    return parse


def positive_number(text: str) -> float:
    """Take a finite number above 0, such as a rate or a time in seconds.

    Raises:
        argparse.ArgumentTypeError: the text is not such a number; NaN and
            infinity are refused too, as no rate or wait can be either.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number above 0.")
    return value


def file_name(text: str) -> str:
    """Take a file name that is not empty (an empty one names no file)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty string names no file.")
    return text

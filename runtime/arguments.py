"""argparse types for every stage's command line: a bad number fails at once, naming its option
(argparse prefixes each message with `argument --NAME:`), not after minutes of work or as a
traceback from deep inside."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None


def number(text: str) -> float:
    """A finite float (an inf or NaN limit or rate is always a mistake)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: not a finite number")
    return value


def _bounded(
    parse: Callable[[str], T], allowed: Callable[[T], bool], rule: str
) -> Callable[[str], T]:
    """An argparse type: `parse`, then refuse a value outside `rule`."""

    def checked(text: str) -> T:
        value = parse(text)
        if not allowed(value):
            raise argparse.ArgumentTypeError(f"{text}: must be {rule}")
        return value

    return checked


at_least_one = _bounded(whole_number, lambda v: v >= 1, "at least 1")
at_least_zero = _bounded(whole_number, lambda v: v >= 0, "0 or more")
positive = _bounded(number, lambda v: v > 0, "more than 0")
not_negative = _bounded(number, lambda v: v >= 0, "0 or more")
fraction_below_one = _bounded(number, lambda v: 0 <= v < 1, "at least 0 and less than 1")  # betas

"""The exceptions that the command line turns into a one-line message."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

MAX_ENV_SEED = 2**31 - 1
"""ale-py seeds each game with a 32-bit signed integer (game i of a vector gets seed + i)."""
MAX_TORCH_SEED = 2**63 - 1
"""The largest seed every generator here accepts (torch takes < 2**64, numpy any, kept portable)."""


class UserError(Exception):
    """A problem the user can fix: bad arguments, a missing file, a mismatched checkpoint.

    The message is one line that names the problem and the fix. The command line prints it
    as ``error: <message>`` and exits with status 2, with no traceback.
    """


class NonFiniteLoss(UserError):
    """A training run stopped on a NaN or infinite loss (its last checkpoint is kept).

    Its own type, so that a search (``policy_distill tune``) can record the run as diverged and
    go on, where any other UserError stops it.
    """


class ConfigError(UserError):
    """Invalid values of a config dataclass, named in field terms (``learning_rate``).

    Library callers read the field names; the command line re-renders the same problems with
    its flag spelling (``--learning-rate``) through :meth:`render`.
    """

    def __init__(self, what: str, problems: Sequence[tuple[str, str]]) -> None:
        self.what = what
        """What was being configured, e.g. ``distillation settings``."""
        self.problems = list(problems)
        """``(field, text)`` pairs: ``("learning_rate", "must be in (0, 1), got 2.0")``."""
        super().__init__(self.render())

    def render(self, name: Callable[[str], str] = str) -> str:
        """One line naming every problem, each field spelled by ``name``: the leading field of
        each problem and every field its text names in backticks (`batch_size`)."""

        def spell(text: str) -> str:
            return re.sub(r"`([a-z_]+)`", lambda m: f"`{name(m[1])}`", text)

        return f"invalid {self.what}: " + "; ".join(
            f"{name(field)} {spell(text)}" for field, text in self.problems
        )


def check_fields(what: str, problems: Sequence[tuple[str, str] | None]) -> None:
    """Raise :class:`ConfigError` for the problems found (``None`` entries are checks that passed)."""
    found = [p for p in problems if p is not None]
    if found:
        raise ConfigError(what, found)


Problem = tuple[str, str] | None
"""A field check's outcome: ``(field, text)``, or None when the value is fine."""


def at_least(obj: object, name: str, minimum: int | float) -> Problem:
    """The field ``name`` of ``obj`` must be a number >= ``minimum`` (NaN fails)."""
    value = getattr(obj, name)
    if not value >= minimum:  # written so that NaN fails
        return name, f"must be at least {minimum}, got {value!r}"
    return None


def within(
    obj: object, name: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False
) -> Problem:
    """The field ``name`` must lie in the interval from ``low`` to ``high`` (NaN fails)."""
    value = getattr(obj, name)
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):

        def show(bound: float) -> str:  # integer bounds in full: a seed's limit is 2147483640, not 2.1e+09
            return str(bound) if isinstance(bound, int) else f"{bound:g}"

        interval = f"{'(' if open_low else '['}{show(low)}, {show(high)}{')' if open_high else ']'}"
        return name, f"must lie in {interval}, got {value!r}"
    return None


def one_of(obj: object, name: str, choices: Sequence[str]) -> Problem:
    """The field ``name`` must be one of ``choices``."""
    value = getattr(obj, name)
    if value not in choices:
        return name, f"must be one of {', '.join(choices)}, got {value!r}"
    return None

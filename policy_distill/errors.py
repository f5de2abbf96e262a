"""The one exception type that the command line turns into a one-line message."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad arguments, a missing file, a mismatched checkpoint.

    The message is one line that names the problem and the fix. The command line prints it
    as ``error: <message>`` and exits with status 2, with no traceback.
    """

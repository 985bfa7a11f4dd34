"""Errors a user can cause, told in one sentence that says what to do, never as a traceback.

Keeps safe: the user's screen. fail() ends a script with one line on standard error; BadFile and
WriteError carry their sentence up to the code that knows what to advise.
"""
import errno
import sys


def fail(message, status=2):
    """Stop with one sentence that says what went wrong and what to do: no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


class BadFile(Exception):
    """A file the scripts read back that cannot be used; the message says which and why."""


class WriteError(Exception):
    """A file that could not be written, with the reason; the file before is left in place.
    .fix says what to do about that reason."""

    def __init__(self, message, errno_=None):
        super().__init__(message)
        self.fix = {errno.EISDIR: "Move away the folder of that name",
                    errno.EACCES: "Make that folder writable"}.get(errno_, "Free some space")

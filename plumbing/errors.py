"""Errors a user can cause, told in one sentence that says what to do, never as a traceback.

Keeps safe: the user's screen. fail() ends a script with one line on standard error; BadFile and
WriteError carry their sentence up to the code that knows what to advise. A Ctrl-C or a signal is
never told as an error, even when a library wraps it in one of its own.
"""
import errno
import sys
from contextlib import suppress


def fail(message, status=2):
    """Stop with one sentence that says what went wrong and what to do: no traceback. Called while
    a wrapped Ctrl-C or signal is being handled, it lets that stop go on instead."""
    stop = behind(sys.exc_info()[1], KeyboardInterrupt)
    if stop:
        raise stop
    with suppress(OSError):              # a standard error that cannot be written: the status
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def behind(error, kind):
    """The first exception of `kind` in `error`'s chain (itself, its cause or context), or None.
    torch.save reports a Ctrl-C or a signal (a KeyboardInterrupt) that lands while it writes as a
    RuntimeError raised while handling it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class BadFile(Exception):
    """A file the scripts read back that cannot be used; the message says which and why."""


# What to do about a failed write, by its errno: only a full disk or quota is a matter of space.
_FIXES = {
    errno.ENOSPC: "Free some space on that disk",
    getattr(errno, "EDQUOT", -1): "Free some space within your disk quota",
    errno.EFBIG: "Raise the largest file this process may write (ulimit -f)",
    errno.ENOENT: "Check that the folder is there and that nothing removes files in it",
    errno.EROFS: "Remount that disk writable",
    errno.ENAMETOOLONG: "Choose a shorter folder path",
    errno.EACCES: "Make that folder writable",
    errno.EPERM: "Make that folder and its files writable",
    errno.EISDIR: "Move away the folder of that name",
}


class WriteError(Exception):
    """A file that could not be written, with the reason; the file before is left in place.
    .fix says what to do about that reason; .outcome, what became of the files."""

    def __init__(self, path, error, outcome="the file was left as it was"):
        # torch.save reports a failed write as "unexpected pos": the OSError behind it says why.
        error = behind(error, OSError) or error
        if getattr(error, "strerror", None):       # the system's words, then the errno's name
            reason = f"{error.strerror}, {errno.errorcode.get(error.errno, error.errno)}"
        else:                     # not a system error: a serializer's, say, in its own words
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        self.fix = _FIXES.get(getattr(error, "errno", None), "Check that disk and folder")
        super().__init__(f"could not write {path} ({reason})")
        self.outcome = outcome

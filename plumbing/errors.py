"""Errors a user can cause, told in one sentence that says what to do, never as a traceback.

Keeps safe: the user's screen. fail() ends a script with one line on standard error; BadFile and
WriteError carry their sentence up to the code that knows what to advise. A Ctrl-C or a signal is
never told as an error, even when a library wraps it in one of its own.
"""
import errno
import os
import shutil
import sys


def fail(message, status=2):
    """Stop with one sentence that says what went wrong and what to do: no traceback. Called while
    a wrapped Ctrl-C or signal is being handled, it lets that stop go on instead."""
    stop = interrupt_in(sys.exc_info()[1])
    if stop:
        raise stop
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def interrupt_in(error):
    """The KeyboardInterrupt (Ctrl-C, or plumbing.cli.Terminated) behind `error`, or None:
    torch.save reports one that lands while it writes as a RuntimeError raised while handling it."""
    return _behind(error, lambda e: isinstance(e, KeyboardInterrupt))


def _behind(error, wanted):
    """The first exception of `error`'s chain (itself, then what it was raised from or while
    handling) for which wanted() is true, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if wanted(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class BadFile(Exception):
    """A file the scripts read back that cannot be used; the message says which and why."""


# Why a write failed, in words, and what to do: each errno its own. Only a full disk or a full
# quota is a matter of space; any other errno is named as the system names it.
_WRITE_FAILURES = {
    errno.ENOSPC: ("", "Free some space on that disk"),
    getattr(errno, "EDQUOT", -1): ("", "Free some space within your disk quota"),
    errno.EFBIG: ("over the largest file this process may write", "Raise that limit (ulimit -f)"),
    errno.ENOENT: ("its folder is gone", "Make that folder again"),
    errno.EROFS: ("", "Remount that disk writable"),
    errno.ENAMETOOLONG: ("", "Choose a shorter folder path"),
    errno.EACCES: ("", "Make that folder writable"),
    errno.EPERM: ("", "Make that folder and its files writable"),
    errno.EISDIR: ("", "Move away the folder of that name"),
}


class WriteError(Exception):
    """A file that could not be written, with the reason; the file before is left in place.
    .fix says what to do about that reason; .outcome, what became of the files."""

    def __init__(self, path, error, outcome="the file was left as it was"):
        # torch.save reports a failed write as "unexpected pos": the OSError behind it says why.
        error = _behind(error, lambda e: isinstance(e, OSError) and e.strerror) or error
        code = getattr(error, "errno", None)
        if isinstance(error, OSError) and error.strerror:
            about, self.fix = _WRITE_FAILURES.get(code, ("", "Check that disk and folder"))
            reason = error.strerror
            if code not in _WRITE_FAILURES:
                reason += f", {errno.errorcode.get(code, f'errno {code}')}"
            if code == errno.ENOENT and os.path.isdir(os.path.dirname(path)):
                about, self.fix = ("its temporary file was removed while it was written",
                                   "Check what removes files in that folder")
            if code == errno.ENOSPC:
                try:
                    free = shutil.disk_usage(os.path.dirname(path)).free
                    about = f"{free // 2 ** 20} MB free there"
                except OSError:
                    pass
            reason += f": {about}" * bool(about)
        else:                     # not a system error: a serializer's, say, in its own words
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
            self.fix = "Check that disk and folder"
        super().__init__(f"could not write {path} ({reason})")
        self.path, self.errno, self.outcome = path, code, outcome

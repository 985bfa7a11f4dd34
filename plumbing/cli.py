"""The command line: the flags every script shares, and the runner that turns a script's end into
an exit status.

Keeps safe: the run's end. Ctrl-C, SIGTERM and SIGHUP stop a run politely; a closed pipe or
terminal ends quietly; what the console cannot encode is escaped; under %run, the host's signal
handlers are left as found; a bad flag value is refused with the range it takes.
"""
import argparse
import math
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path

import torch
from torch.torch_version import TorchVersion

from plumbing import speed
from plumbing.errors import BadFile, WriteError, fail

DEFAULT_DATA_DIR = "~/.pytorch/F_MNIST_data/"                 # the tutorial's torchvision root
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "outputs"
DEFAULT_LR, DEFAULT_BATCH_SIZE = 0.003, 64                     # the tutorial's
# A training step holds about 10 kB per image of its batch: half the training set at once keeps
# every run of every script under 1.5 GB (docs/speed.md); the whole set would reach 1.5 GB.
MAX_BATCH_SIZE = 30000
LAST_SEED = 2 ** 64 - 1                                         # torch.manual_seed's
# How a run ended (common.train's Run.stopped) as the shell's exit status.
EXIT_STATUS = {None: 0, "diverged": 1, "interrupted": 130, "terminated": 143, "hung up": 129}


def say_how_it_stopped(run, diverged):
    """After a run's summary, on standard error: why a run blew up (`diverged`: what was seen and
    what to change), or what a stop by Ctrl-C or a signal kept."""
    n = run.epochs
    if run.stopped == "diverged":
        print(f"error: the training diverged at epoch {n + 1} {diverged}.", file=sys.stderr)
    elif run.stopped:
        kept = f"Kept the {n} completed epoch{'s' * (n != 1)}" if n else "No epoch was completed"
        print(f"{kept}; run again to train all of them.", file=sys.stderr)


def divergence_advice(args):
    """What to change after a training blew up: a smaller learning rate than the one in use."""
    smaller = DEFAULT_LR if args.lr > DEFAULT_LR else args.lr / 10
    return f"with --lr {args.lr:g}: try a smaller --lr, such as {smaller:g}"


# ------------------------------------------------------------------------------- the script runner

# The signals run_script makes a polite stop, each as common.train's Run.stopped names it
STOP_SIGNALS = {signal.SIGTERM: "terminated"}           # kill, timeout, a container's stop
if hasattr(signal, "SIGHUP"):                            # none on Windows
    STOP_SIGNALS[signal.SIGHUP] = "hung up"              # the terminal closed


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where a Ctrl-C would be: the same polite stop."""

    def __init__(self, signum):
        super().__init__()
        self.stopped = STOP_SIGNALS[signum]


def _terminate(signum, frame):
    if STOP_SIGNALS[signum] == "hung up":    # the terminal closed: its output goes nowhere
        _silence(*(s for s in (sys.stdout, sys.stderr) if s and s.isatty()))
    raise Terminated(signum)


def _silence(*streams):
    """Point the streams at /dev/null: their terminal, pipe or disk cannot take more."""
    for stream in filter(None, streams):                   # None: closed at the start
        with suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def run_script(main):
    """Run a script's main() for the command line: its return value is the exit status. In a
    process of its own, the settings that cannot be undone are made first (speed.py), and what
    the console cannot encode is escaped; under %run or runpy, neither, and the host's signal
    handlers are put back after."""
    if speed.owns_process(main.__code__.co_filename):
        speed.for_own_process()
        with suppress(AttributeError):                  # None: started with standard output closed
            sys.stdout.reconfigure(errors="backslashreplace")    # a non-Latin path, ASCII console
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        for signum, handler in handlers.items():
            if handler is not signal.SIG_IGN:     # ignored where it started (nohup): it stays so
                signal.signal(signum, _terminate)
        _run(main)
    finally:
        for stream in filter(None, (sys.stdout, sys.stderr)):
            try:
                stream.flush()
            except OSError:
                _silence(stream)
        for signum, handler in handlers.items():
            if handler is not None:              # None: set outside Python, cannot be put back
                signal.signal(signum, handler)


def _run(main):
    """run_script's work: main() run, its end turned into an exit status."""
    try:
        status = main()
        if sys.stdout:                   # None when the script was started with stdout closed
            sys.stdout.flush()
    except KeyboardInterrupt as stop:    # outcome: what became of the files it stopped saving
        with suppress(OSError):
            print(f"\nStopped: {getattr(stop, 'outcome', 'the files already written are complete')}"
                  ".", file=sys.stderr)
        status = EXIT_STATUS[getattr(stop, "stopped", "interrupted")]
    except WriteError as e:
        fail(f"{e}: {e.outcome}. {e.fix} or pass another --out-dir, and run again.", 1)
    except BadFile as e:
        fail(str(e))
    except (MemoryError, RuntimeError) as e:
        # torch's CPU allocator says "can't allocate memory", CUDA's "out of memory"
        if not (isinstance(e, MemoryError) or "allocate" in str(e) or "out of memory" in str(e)):
            raise                        # a RuntimeError of another kind: a bug, with its traceback
        fail("out of memory: pass a smaller --batch-size, close other programs, or use a machine "
             "with more memory.", 1)
    except OSError as e:
        if e.filename is not None:       # a path that could not be checked or read
            fail(f"cannot use {e.filename} ({e.strerror}): check the path and its permissions, "
                 "or pass another.")
        _silence(sys.stdout)             # print() failed: a closed pipe (| head), terminal or disk
        if not isinstance(e, BrokenPipeError):       # a closed pipe's reader has all it wanted
            fail(f"the output could not be written ({e.strerror or e}).", 1)
        status = 141
    sys.exit(status)


# ------------------------------------------------------------------------------------------ flags

def make_parser(doc):
    """The flags every script has: where the data is and where the outputs go."""
    # doc is the script's docstring: None under python -OO, which drops docstrings.
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=path_arg, default=DEFAULT_DATA_DIR,
                        help="torchvision root; the IDX files live in DATA_DIR/FashionMNIST/raw/")
    parser.add_argument("--out-dir", type=path_arg, default=str(DEFAULT_OUT_DIR),
                        help="folder for plots, histories, checkpoints")
    parser.add_argument("--no-download", action="store_true",
                        help="never download; use only local copies of the data")
    return parser


def add_dropout_arg(parser):
    parser.add_argument("--dropout", type=probability, default=0.2,
                        help="probability of zeroing each hidden unit while training")


def add_device_arg(parser):
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto picks CUDA, then Apple's MPS, then the CPU")


def make_training_parser(doc):
    """The flags of the training scripts: the tutorial's knobs, its values as defaults."""
    parser = make_parser(doc)
    parser.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    parser.add_argument("--batch-size", type=_batch_size, default=DEFAULT_BATCH_SIZE,
                        help=f"images per batch, at most {MAX_BATCH_SIZE} (half the training set)")
    parser.add_argument("--lr", type=positive_float, default=DEFAULT_LR,
                        help="Adam's learning rate")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="random seed: the same seed gives the same run")
    add_device_arg(parser)
    return parser


def get_device(name):
    """The device --device names; 'auto' picks CUDA, then Apple's MPS, then the CPU."""
    available = [d for d, ok in (("cuda", torch.cuda.is_available()),
                                 ("mps", torch.backends.mps.is_available()), ("cpu", True)) if ok]
    if name == "auto":
        name = available[0]
    elif name not in available:
        fail(f"--device {name} is not available on this machine; use --device auto or one of: "
             f"{', '.join(available)}.")
    return torch.device(name)


def fused_adam(device):
    """Whether optim.Adam and AdamW have a fused kernel for `device` in this torch, where
    fused=True raises a RuntimeError without one: CUDA and the CPU have it in every torch that
    requirements.txt allows (2.4 on), Apple's MPS from 2.5."""
    return device.type != "mps" or TorchVersion(torch.__version__) >= "2.5"


def path_arg(text):
    """An argparse type for a path: an empty one is refused, not read as "not given"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a path, or leave the flag out")
    return text


def _number(kind, allowed, inside):
    """An argparse type for a number for which inside() holds; a refused one is told the numbers
    `allowed`, in words."""
    what = "a whole number" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; use {what} {allowed}") \
                from None
        if not (math.isfinite(value) and inside(value)):
            raise argparse.ArgumentTypeError(f"{text} is out of range; use {what} {allowed}")
        return value
    return parse


positive_int = _number(int, "at least 1", lambda n: n >= 1)
positive_float = _number(float, "greater than 0", lambda x: x > 0)
non_negative_int = _number(int, "at least 0", lambda n: n >= 0)
non_negative_float = _number(float, "at least 0", lambda x: x >= 0)
probability = _number(float, "from 0 up to but not including 1", lambda p: 0 <= p < 1)
_batch_size = _number(int, f"from 1 to {MAX_BATCH_SIZE}", lambda n: 1 <= n <= MAX_BATCH_SIZE)
_seed = _number(int, f"from 0 to {LAST_SEED}", lambda n: 0 <= n <= LAST_SEED)

"""The mechanics a learner may skip: each module keeps one thing safe, so that the lesson's code
(common.py and the numbered scripts) can stay as plain as the tutorial's.

    errors     one sentence for every mistake, never a traceback
    cli        the flags and the script runner: Ctrl-C and signals, exit statuses
    saving     safe writes, histories and checkpoints
    datafiles  finding, checking and unpacking the four Fashion-MNIST files
    photo      preparing a learner's own photo for 04_inference.py --image
    speed      fast training on the CPU: settings made only where they can be undone, or in a
               process of the script's own (python 02_baseline.py)

Imports run one way: the lesson imports these modules; none of them imports the lesson. Each
script imports plumbing first: what would stop torch or matplotlib from loading is said here in
one sentence, before either is imported (below).
"""
import os
import sys

from plumbing.errors import fail


def _check_what_torch_needs():
    """One sentence, not a library's traceback or its raw warning, for what stops the libraries
    from loading: a working folder that was deleted (MKL cannot load then), a thread count that
    is not a number, a missing package, a memory limit too low for torch's libraries."""
    try:
        os.getcwd()
    except OSError:
        fail("the folder this was started in no longer exists: cd to a folder that exists, and "
             "run again.")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value and not (value.strip().isdigit() and int(value) > 0):
            fail(f"{name} is {value!r}, not a number of threads: set it to a whole number such as "
                 "2, or unset it.")
    try:
        import torch, torchvision    # noqa: F401, E401  (only to see that they load)
    except ModuleNotFoundError as e:
        fail(f"this Python ({sys.executable}) has no {e.name}: install what the scripts need, with "
             "pip install -r requirements.txt, or run them with the Python that has it.")
    except (ImportError, OSError) as e:
        fail(f"torch's libraries could not be loaded ({str(e).splitlines()[0][:200]}): under a "
             "memory limit (ulimit -v), raise it; otherwise reinstall torch.")


# The scripts draw into files only: they need no backend of matplotlib's. But a notebook's kernel
# names its own in MPLBACKEND for every program it starts (!python 01_data.py), and where that
# backend is not installed, matplotlib refuses to import at all. So each script imports plumbing
# first, and plumbing imports matplotlib without that name.
def _import_matplotlib_without_mplbackend():
    """Import matplotlib with MPLBACKEND unset, then give the name back: to the environment, and to
    matplotlib where it knows that backend, as matplotlib itself would have read it."""
    backend = os.environ.pop("MPLBACKEND")
    try:
        import matplotlib
    finally:
        os.environ["MPLBACKEND"] = backend
    try:
        matplotlib.rcParams["backend"] = backend
    except ValueError:                   # a backend this matplotlib does not know: none is needed
        pass


if "matplotlib" not in sys.modules and os.environ.get("MPLBACKEND"):
    _import_matplotlib_without_mplbackend()
if sys.modules.get("torch") is None:
    _check_what_torch_needs()

"""The mechanics a learner may skip: each module keeps one thing safe, so that the lesson's code
(common.py and the numbered scripts) can stay as plain as the tutorial's.

    errors     one sentence for every mistake, never a traceback
    cli        the flags and the script runner: Ctrl-C and signals, exit statuses
    saving     safe writes, histories and checkpoints
    datafiles  finding, checking and unpacking the four Fashion-MNIST files
    photo      preparing a learner's own photo for 04_inference.py --image
    speed      fast training on the CPU: settings made only where they can be undone, or in a
               process of the script's own (python 02_baseline.py)

Imports run one way: the lesson imports these modules; none imports the lesson. Each script
imports plumbing first, so that what would stop torch or matplotlib from loading is said here.
"""
import importlib.util
import os
import sys
from contextlib import suppress

from plumbing.errors import fail


def _check_what_torch_needs():
    """One sentence, not a traceback, for what stops the libraries from loading."""
    try:
        os.getcwd()
    except OSError:                      # MKL cannot load from a deleted folder
        fail("the folder this was started in no longer exists: cd to a folder that exists, and "
             "run again.")
    try:
        import torch, torchvision    # noqa: F401, E401  (only to see that they load)
        missing = None if importlib.util.find_spec("matplotlib") else "matplotlib"
    except ModuleNotFoundError as e:
        missing = e.name
    except (ImportError, OSError) as e:
        fail(f"torch's libraries could not be loaded ({str(e).splitlines()[0][:200]}): under a "
             "memory limit (ulimit -v), raise it; otherwise reinstall torch.")
    if missing:
        fail(f"this Python ({sys.executable}) has no {missing}: install what the scripts need, "
             "with pip install -r requirements.txt, or run them with the Python that has it.")


# A notebook's kernel names its own backend in MPLBACKEND for every program it starts (!python
# 01_data.py); where that backend is not installed, matplotlib refuses to import at all. The
# scripts draw into files only, so plumbing imports matplotlib without that name.
def _import_matplotlib_without_mplbackend():
    """Import matplotlib with MPLBACKEND unset, then give the name back to the environment and,
    where it knows that backend, to matplotlib."""
    backend = os.environ.pop("MPLBACKEND")
    try:
        import matplotlib
    finally:
        os.environ["MPLBACKEND"] = backend
    with suppress(ValueError):           # a backend this matplotlib does not know: none is needed
        matplotlib.rcParams["backend"] = backend


if sys.modules.get("torch") is None:
    _check_what_torch_needs()
if "matplotlib" not in sys.modules and os.environ.get("MPLBACKEND"):
    _import_matplotlib_without_mplbackend()

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
script imports plumbing first, before matplotlib, which would otherwise refuse to import under a
launcher's MPLBACKEND (below).
"""
import os
import sys


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

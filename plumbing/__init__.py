"""The mechanics a learner may skip: each module keeps one thing safe, so that the lesson's code
(common.py and the numbered scripts) can stay as plain as the tutorial's.

    errors     one sentence for every mistake, never a traceback
    cli        the flags and the script runner: Ctrl-C and signals, exit statuses
    saving     safe writes, histories and checkpoints
    datafiles  finding, checking and unpacking the four Fashion-MNIST files
    photo      preparing a learner's own photo for 04_inference.py --image
    memory     giving freed memory back to the system at once; large tensors in huge pages

Imports run one way: the lesson imports these modules; none of them imports the lesson. Each
script imports plumbing first: before torch makes a tensor (it reads the switch for huge pages
then), and before matplotlib, which then imports whatever MPLBACKEND a launcher sets.
"""
import os
import sys

from plumbing import memory

# Before torch makes its first tensor, when it reads the switch, once: the training images in 2 MB
# pages, an epoch 1.1 times faster (plumbing/memory.py, docs/speed.md).
memory.huge_pages()


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

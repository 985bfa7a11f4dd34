"""The mechanics a learner may skip: each module keeps one thing safe, so that the lesson's code
(common.py and the numbered scripts) can stay as plain as the tutorial's.

    errors     one sentence for every mistake, never a traceback
    cli        the flags and the script runner: Ctrl-C and signals, exit statuses
    saving     safe writes, histories and checkpoints
    datafiles  finding, checking and unpacking the four Fashion-MNIST files
    photo      preparing a learner's own photo for 04_inference.py --image
    memory     giving freed memory back to the system at once

Imports run one way: the lesson imports these modules; none of them imports the lesson.
"""

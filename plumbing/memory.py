"""Memory: a run holds what it uses, not what it once used.

Keeps safe: the machine's memory. glibc's malloc serves the blocks of a few megabytes that a large
batch allocates from its heap, once it has seen larger ones freed, and keeps them there when
they are freed, scattered: a second training in the same run (05_beyond.py --final-fit) then
starts hundreds of megabytes higher. Blocks of a megabyte and more are given back to the system
as soon as they are freed instead.
"""
import ctypes
import os
from contextlib import suppress

M_MMAP_THRESHOLD = -3                      # glibc's malloc.h: the size from which mmap serves


def give_back_freed_blocks(threshold=2 ** 20):
    """Have glibc's malloc serve blocks of `threshold` bytes and more by mmap, which returns them
    to the system when freed; a batch of 64 images (200 kB) stays in the heap. Only where the C
    library is glibc: others (macOS, Windows, musl) are left as they are."""
    with suppress(AttributeError, ValueError, OSError):
        if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold)

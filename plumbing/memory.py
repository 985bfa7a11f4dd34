"""Memory: a run holds what it uses, not what it once used.

Keeps safe: the machine's memory. glibc's malloc serves the blocks of a few megabytes that a large
batch allocates from its heap, once it has seen larger ones freed, and keeps them there when
they are freed, scattered: a second training in the same run (05_beyond.py --final-fit) then
starts hundreds of megabytes higher. Blocks of a megabyte and more are given back to the system
as soon as they are freed instead.

And its speed: a batch gathers 64 images from 188 MB of training images at random places, and
each image read in a 4 kB page of its own makes the processor look the page up afresh. PyTorch
puts a tensor of 2 MB and more in 2 MB pages ("transparent huge pages", Linux) when the
environment says THP_MEM_ALLOC_ENABLE=1, read once, at its first allocation: so before torch
makes a tensor, which is why plumbing/__init__.py asks for it (docs/speed.md, "Huge pages").
"""
import ctypes
import os
from contextlib import suppress

M_MMAP_THRESHOLD = -3                      # glibc's malloc.h: the size from which mmap serves
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"        # PyTorch's switch (c10's alloc_cpu.cpp, torch 2.2 on)


def huge_pages():
    """Ask PyTorch to put tensors of 2 MB and more in huge pages, unless the environment already
    says otherwise (THP_MEM_ALLOC_ENABLE=0 is obeyed). Without effect where torch has already
    allocated, or where the system has no transparent huge pages (macOS, Windows, `never`)."""
    os.environ.setdefault(HUGE_PAGES, "1")


def give_back_freed_blocks(threshold=2 ** 20):
    """Have glibc's malloc serve blocks of `threshold` bytes and more by mmap, which returns them
    to the system when freed; a batch of 64 images (200 kB) stays in the heap. Only where the C
    library is glibc: others (macOS, Windows, musl) are left as they are."""
    with suppress(AttributeError, ValueError, OSError):
        if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold)

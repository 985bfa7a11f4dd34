"""Speed on the CPU, without a number of the run changed and without a host left changed.

Keeps safe: the speed of training on a CPU, and whatever runs the script. for_own_process()
makes the settings a library reads only once, and only in a process of the script's own;
threads_chosen() chooses the thread count while a network trains. docs/speed.md says why each.
"""
import copy
import ctypes
import os
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import torch

# ------------------------------------------------------------------- a process of the script's own

STRICT_SUMS = "MKL_CBWR"                     # MKL's switch; AUTO,STRICT: the same for any count
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"          # PyTorch's switch (c10's alloc_cpu.cpp, torch 2.2 on)
M_MMAP_THRESHOLD = -3                        # glibc's malloc.h: the size from which mmap serves


def owns_process(script):
    """Whether this process was started to run `script` (python 02_baseline.py), rather than being
    a host that runs it (%run in a notebook, runpy, python -c)."""
    for arg in sys.orig_argv[1:]:
        if arg in ("-c", "-m"):
            return False
        if not arg.startswith("-") and Path(arg).resolve() == Path(script).resolve():
            return True
    return False


def for_own_process():
    """Strict sums, huge pages, denormals flushed, freed blocks returned (docs/speed.md), made
    before torch's first tensor, product and thread. A value the user set is kept (torch warns)."""
    if not os.environ.get(STRICT_SUMS):
        os.environ[STRICT_SUMS] = "AUTO,STRICT"
    if not os.environ.get(HUGE_PAGES):
        os.environ[HUGE_PAGES] = "1"
    torch.set_flush_denormal(True)
    with suppress(AttributeError, ValueError, OSError):       # glibc only: not macOS, Windows, musl
        if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 2 ** 20)


# ------------------------------------------------------------------- the thread count, measured

WINDOW = 40           # optimizer steps timed per try: about a tenth of a second here,
SECONDS = 2.0         # or, with big batches, as many steps as take this long (3 at least)
KEEP = 25             # windows the choice is kept before the candidates are timed again,
LONGEST = 4 * KEEP    # doubled each time the same count wins again, up to this
SLOWER = 1.5          # a window this much slower than the choice's own time: time them again
EARLY = 5             # steps after which a count whose typical step is SLOWER stops being timed


def candidates(threads):
    """The counts worth timing on `threads` cores, fewest first: one (which never collapses, so it
    sets the bar), half of them, all but the one another program may hold, and all."""
    return sorted({threads, threads - 1, threads // 2, 1} - {0})


def typical(steps):
    """A window's step time (two steps or more): the mean, for what stalls cost, without the
    longest step, where the validation pass falls once an epoch."""
    return (sum(steps) - max(steps)) / (len(steps) - 1)


class ThreadChooser:
    """Times the steps in windows and sets torch's thread count between two steps: each round
    times every candidate for one window and keeps the fastest, until the round that is due or
    a slowdown (docs/speed.md, "A machine that is busy")."""

    def __init__(self, threads, clock=time.perf_counter, set_threads=torch.set_num_threads):
        self.threads, self.clock, self.set_threads = threads, clock, set_threads
        self.choice, self.timed, self.steps, self.last = threads, {}, [], None
        self.plan = []                       # the counts still to time in this round
        self.kept, self.keep_for, self.best_before = 0, KEEP, None
        self.started, self.on = False, True

    def step(self):
        """Called after each optimizer step."""
        if not self.started:                 # the first round starts after the first step
            self.started = True
            self.plan = candidates(self.threads)
            return self._use(self.plan[0])
        now = self.clock()
        if self.last is not None:
            self.steps.append(now - self.last)
        self.last = now
        if not self._window_over():
            return
        seconds, self.steps = typical(self.steps), []
        if self.plan:                                           # timing the candidates
            self.timed[self.plan.pop(0)] = seconds
            if self.plan:
                return self._use(self.plan[0])
            choice = min(self.timed, key=self.timed.get)
            self.keep_for = min(2 * self.keep_for, LONGEST) if choice == self.choice else KEEP
            self.choice, self.kept = choice, 0
            return self._use(self.choice)
        self.kept += 1                                          # running the choice
        # A slowdown calls for fewer threads; on one there are none fewer (a busier machine only
        # slows one thread's share of a core), so there it waits for the round that is due.
        slowed = self.choice > 1 and seconds > SLOWER * self.timed[self.choice]
        if self.kept >= self.keep_for or slowed:
            self.best_before = min(seconds, self.timed[self.choice])
            self.timed, self.plan = {}, candidates(self.threads)
            self._use(self.plan[0])

    def _window_over(self):
        """Whether the window ends: after WINDOW steps, or SECONDS of big batches' steps, or, for a
        count being timed, as soon as it is plainly SLOWER than the fastest so far."""
        if len(self.steps) >= WINDOW or (len(self.steps) >= 3 and sum(self.steps) >= SECONDS):
            return True
        best = min(self.timed.values(), default=self.best_before)
        if not self.plan or best is None or len(self.steps) < 2:
            return False
        return (sum(self.steps) - max(self.steps) > SLOWER * WINDOW * best
                or len(self.steps) >= EARLY and typical(self.steps) > SLOWER * best)

    def _use(self, n):
        self.set_threads(n)
        self.last = None                  # the step after a change starts a new interval


def same_numbers(model, images, counts):
    """Whether a forward and backward pass of a copy of `model` on `images`, the batch it is about
    to take, gives the same floats on each of `counts` threads. Draws no random number."""
    threads = torch.get_num_threads()
    # Dropout off, so that no random number is drawn, also where a model's eval() does nothing
    # (05_beyond.py --no-eval): train(False) is what eval() calls.
    copied = copy.deepcopy(model).train(False)
    results = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            copied.zero_grad()
            with torch.enable_grad():                     # also during validation, under no_grad
                out = copied(images.detach())
                out.sum().backward()
            results.append([out.detach()] + [p.grad.clone() for p in copied.parameters()])
    finally:
        torch.set_num_threads(threads)
    return all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))


@contextmanager
def threads_chosen(model, optimizer, device):
    """While `model` trains with `optimizer` on the CPU, the fastest thread count measured, unless
    the user set it or there is one core; put back afterwards. A batch size whose numbers differ
    between counts (same_numbers) keeps the count in use for the rest of the run."""
    threads = torch.get_num_threads()
    user_set = os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")   # obeyed
    if device.type != "cpu" or threads < 2 or user_set:
        yield None
        return
    chooser, checked = ThreadChooser(threads), set()

    def before_batch(module, args):
        images = args[0]
        if chooser.on and chooser.started and len(images) not in checked:
            checked.add(len(images))
            if not same_numbers(module, images, candidates(threads)):
                chooser.on = False             # the count in use before, for the rest of the run
                torch.set_num_threads(threads)

    def after_step(optimizer, args, kwargs):
        if chooser.on:
            chooser.step()

    handles = [model.register_forward_pre_hook(before_batch),
               optimizer.register_step_post_hook(after_step)]
    try:
        yield chooser
    finally:
        for handle in handles:
            handle.remove()
        torch.set_num_threads(threads)

"""How many CPU threads PyTorch uses while training, chosen by measuring, not assumed.

Keeps safe: the speed of an epoch on a machine that is busy with something else. PyTorch splits
each matrix product over all the cores, and its threads meet at a barrier inside every product:
when another program takes one of the cores, every step waits for the thread that lost its core,
and on 2 cores an epoch takes 4 to 30 times longer (docs/speed.md). So, between optimizer steps,
each candidate thread count is timed for a short window, the fastest is kept, and the choice is
timed again now and then, or at once when the steps slow down. An OMP_NUM_THREADS set by the
user is obeyed as given: then nothing here runs.

Keeps safe too: the same seed gives the same run. A batch's matrix product sums in another order
with another thread count, so the choice would change the numbers; MKL's strict reproducible
mode (MKL_CBWR=AUTO,STRICT, set before the first product) makes them the same for any count, and
where that cannot be checked to hold, the thread count is left alone.

And the speed lost to numbers too small for a float (no_denormals): flushed to zero, they cost
nothing and change no result.
"""
import os
import time
from contextlib import contextmanager

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

WINDOW = 40           # optimizer steps timed per try: about a tenth of a second here,
SECONDS = 2.0         # or, with big batches, as many steps as take this long (3 at least)
KEEP = 25             # windows the choice is kept before the candidates are timed again,
LONGEST = 4 * KEEP    # doubled each time the same count wins again, up to this
SLOWER = 1.5          # a window this much slower than the choice's own time: time them again
EARLY = 5             # steps after which a count whose typical step is SLOWER stops being timed


def candidates(threads):
    """The thread counts worth timing on `threads` cores, fewest first: one, half of them, all but
    the one another program may hold, and all. One never collapses, so it sets the bar at which a
    count that does (waiting on a busy core) stops being timed."""
    return sorted({threads, threads - 1, threads // 2, 1} - {0})


def typical(steps):
    """A window's step time (two steps or more): the mean without its longest step. The mean, for
    what the steps cost: beside busy programs, two threads take most steps as fast as alone and
    stall on a few for a descheduled thread (measured: medians of 6 to 15 ms, means of 7 to 32),
    and a median hides the stalls. Without the longest, for the validation pass between two
    epochs, which falls between two steps once an epoch. (With epochs of fewer steps than a
    window, such as 05_beyond.py --batch-size 30000, a window holds several: every count's window
    then counts them alike, as part of what an epoch costs.)"""
    return (sum(steps) - max(steps)) / (len(steps) - 1)


class ThreadChooser:
    """Times the steps in windows and sets torch's thread count between two steps.

    Each round times every candidate for one window (its typical step, typical()) and keeps the
    fastest for KEEP windows, twice as long each time the same count wins again (up to LONGEST).
    A window of the choice that runs SLOWER than it was timed (another program has started)
    starts a new round at once, unless the choice is one thread: then nothing faster can be found
    by timing again.
    """

    def __init__(self, threads, clock=time.perf_counter, set_threads=torch.set_num_threads):
        self.threads, self.clock, self.set_threads = threads, clock, set_threads
        self.choice, self.timed, self.steps, self.last = threads, {}, [], None
        self.plan = candidates(threads)      # the counts still to time in this round
        self.kept, self.keep_for, self.best_before = 0, KEEP, None
        self.set_threads(self.plan[0])

    def step(self):
        """Called after each optimizer step."""
        now = self.clock()
        if self.last is not None:
            self.steps.append(now - self.last)
        self.last = now
        if len(self.steps) < WINDOW and not self._full() and not self._hopeless():
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

    def _full(self):
        """Whether the window has lasted SECONDS: a step of a big batch can take a second, and
        40 of them on the slower count would cost most of a short run."""
        return len(self.steps) >= 3 and sum(self.steps) >= SECONDS

    def _hopeless(self):
        """Whether the count being timed has already taken SLOWER times as long as a whole window
        of the fastest so far, or its typical step after EARLY steps is SLOWER than the fastest's
        (both without its longest step): a busy core can make its window cost seconds, so it
        ends early."""
        best = min(self.timed.values(), default=self.best_before)
        if not self.plan or best is None or len(self.steps) < 2:
            return False
        return (sum(self.steps) - max(self.steps) > SLOWER * WINDOW * best
                or len(self.steps) >= EARLY and typical(self.steps) > SLOWER * best)

    def _use(self, n):
        self.set_threads(n)
        self.last = None                  # the step after a change starts a new interval


def no_denormals():
    """Flush float32s below 1.2e-38 (denormals) to zero, in this thread and in the threads torch
    starts after it, which inherit the setting: call it before torch's first parallel operation.
    A ReLU unit that no longer fires for any image gets a gradient of zero, and Adam's running
    average of that gradient shrinks by a tenth at each step, into that range, where it stays:
    0.9 times the smallest denormal rounds back to itself. After 10 epochs of 03_dropout.py, 88 of
    the first layer's 256 units were such, and 86,000 of the 730,000 numbers of the network and its
    optimizer denormals; an x86 CPU takes a slow path for every operation on one, at every step.
    Flushed, they become the zero they were heading for, and no number of a run changes (02 and
    03, seed 0, 30 epochs: the same histories to the last digit). Returns whether it can flush."""
    return torch.set_flush_denormal(True)


def strict_sums():
    """Ask MKL, before its first matrix product, for sums that do not depend on the thread count;
    an MKL_CBWR the user set is kept."""
    if not os.environ.get("MKL_CBWR"):
        os.environ["MKL_CBWR"] = "AUTO,STRICT"


def same_numbers(threads):
    """Whether a product of the network's shape gives the same floats on `threads` threads as on
    one: only then may the count change during a run."""
    g = torch.Generator().manual_seed(0)                 # not the global generator: the run's own
    x, w = torch.randn(64, 784, generator=g), torch.randn(784, 256, generator=g)
    results = []
    for n in (threads, 1):
        torch.set_num_threads(n)
        results.append(x @ w)
    torch.set_num_threads(threads)
    return torch.equal(*results)


def user_chose():
    """Whether the user set the thread count: then it is obeyed as given."""
    return any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


@contextmanager
def chosen_by_measuring():
    """While training on the CPU, torch's thread count is the fastest measured (ThreadChooser),
    unless the user set it, there is one core, or the count would change the numbers; restored
    afterwards."""
    threads = torch.get_num_threads()
    if threads < 2 or user_chose() or not same_numbers(threads):
        yield
        return
    chooser = ThreadChooser(threads)

    def after_step(optimizer, args, kwargs):
        params = optimizer.param_groups[0]["params"]
        if params and params[0].device.type == "cpu":       # a GPU's steps need no CPU threads
            chooser.step()

    handle = register_optimizer_step_post_hook(after_step)
    try:
        yield chooser
    finally:
        handle.remove()
        torch.set_num_threads(threads)

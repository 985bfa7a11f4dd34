"""Guards the speed settings (plumbing/speed.py), none of which may change a result or outlive a
run in a host: the thread count chosen by measuring, strict sums, denormals flushed, huge pages,
freed memory given back, one batch in memory."""
import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from torch import nn, optim
from torch.utils.data import TensorDataset

import common
from plumbing import datafiles, speed
from tests.tiny import HERE, beyond, write_fake_fashion_mnist


class ThreadRuleTests(unittest.TestCase):
    """plumbing.speed.ThreadChooser: the thread count chosen by timing the steps."""

    def chooser(self, threads, seconds_per_step):
        """A ThreadChooser on a fake clock: each step takes seconds_per_step(thread count)."""
        now, used = [0.0], [threads]

        def set_threads(n):
            used[0] = n

        chooser = speed.ThreadChooser(threads, clock=lambda: now[0],
                                               set_threads=set_threads)

        def steps(n):
            for _ in range(n):
                now[0] += seconds_per_step(used[0])
                chooser.step()
            return used[0]
        return chooser, steps

    def test_the_candidates_for_2_to_16_cores(self):
        self.assertEqual([speed.candidates(n) for n in (1, 2, 4, 8, 16)],
                         [[1], [1, 2], [1, 2, 3, 4], [1, 4, 7, 8], [1, 8, 15, 16]])

    def test_the_fastest_count_is_kept_and_a_slowdown_makes_it_choose_again(self):
        window = speed.WINDOW
        alone = {2: 0.0020, 1: 0.0026}                         # two threads 1.3x faster alone
        # and 3.6x slower beside a busy program
        busy = {2: 0.0100, 1: 0.0028}
        load = [alone]
        chooser, steps = self.chooser(2, lambda n: load[0][n])
        self.assertEqual(steps(3 * window), 2)                 # timed 2, then 1: 2 is kept
        self.assertEqual(chooser.choice, 2)
        load[0] = busy                                         # another program starts
        used = steps(4 * window)
        self.assertEqual((chooser.choice, used), (1, 1))
        load[0] = alone                                        # and stops: found at the next round
        steps(speed.LONGEST * window + 3 * window)
        self.assertEqual(chooser.choice, 2)

    def test_on_one_thread_a_slowdown_starts_no_round_before_the_one_that_is_due(self):
        # Beside two busy programs one thread's share of a core wanders (its windows slow by 1.5x
        # and more), and each new round times two threads again, which collapse: on one thread,
        # only the round that is due times them.
        window = speed.WINDOW
        share = [1.0]
        times = {1: 0.006, 2: 0.150}
        chooser, steps = self.chooser(2, lambda n: times[n] * (share[0] if n == 1 else 1))
        steps(window + 10)                                     # one thread timed, then two: cut off
        self.assertEqual(chooser.choice, 1)
        timed_two = []
        original = chooser._use
        chooser._use = lambda n: (timed_two.append(n) if n == 2 else None, original(n))
        share[0] = 2.0                                         # the share halves
        steps((speed.KEEP - 2) * window)
        self.assertEqual(timed_two, [])                        # no new round yet
        steps(3 * window)
        self.assertEqual(timed_two, [2])                       # the round that was due

    def test_a_count_that_collapses_is_timed_for_a_few_steps_only(self):
        # Two threads 3.3 times slower than one: cut off after EARLY steps by their median, not
        # after 1.5 windows' worth of the fastest (18 steps); one thread, timed first, is kept.
        times = {1: 0.006, 2: 0.020}
        chooser, steps = self.chooser(2, lambda n: times[n])
        on_two = 0
        for _ in range(2 * speed.WINDOW):
            on_two += steps(1) == 2
        self.assertEqual(chooser.choice, 1)
        self.assertEqual(on_two, speed.EARLY + 1)     # the first step after a change is
                                                               # not timed: it starts an interval

    def test_on_four_cores_one_busy_it_leaves_that_core(self):
        times = {4: 0.010, 3: 0.0016, 2: 0.0020, 1: 0.0030}   # 4 threads wait for the busy core
        chooser, steps = self.chooser(4, lambda n: times[n])
        self.assertEqual(steps(6 * speed.WINDOW), 3)

    def test_a_pause_between_two_steps_such_as_validation_does_not_count(self):
        # Once an epoch; here once in every 45 steps, so that each window holds one or none.
        pauses = iter([1.0 if i % 45 == 44 else 0.002 for i in range(1000)])
        chooser, steps = self.chooser(2, lambda n: next(pauses) * (1 if n == 2 else 1.3))
        steps(3 * speed.WINDOW)
        self.assertEqual(chooser.choice, 2)

    def test_a_count_that_stalls_now_and_then_is_judged_by_what_it_costs(self):
        # Beside busy programs two threads take most steps fast and stall on some, waiting for a
        # descheduled thread (measured: medians of 6 to 15 ms, means of 7 to 32): their median
        # beats one thread's, their time does not. Stalling every other step, they are cut off
        # after EARLY steps (the first after the change is not timed).
        for pattern in ((0.0015, 0.0015, 0.030), (0.030, 0.0015)):
            with self.subTest(pattern=pattern):
                on_two = itertools.cycle(pattern)
                chooser, steps = self.chooser(2, lambda n: 0.003 if n == 1 else next(on_two))
                used = [steps(1) for _ in range(3 * speed.WINDOW)]
                self.assertEqual(chooser.choice, 1)
                # the first step, at torch's own count, and the EARLY steps timed
                self.assertEqual(used.count(2), speed.EARLY + 1)

    def test_a_pause_in_a_counts_first_steps_neither_ends_its_window_nor_counts(self):
        count = [0]

        def seconds(n):
            count[0] += 1
            # Step 1 at torch's count, untimed; one thread's window; then two threads' first
            # timed step (the step after a change starts an interval) is the pause.
            return 1.0 if count[0] == speed.WINDOW + 4 else 0.002 * (1 if n == 2 else 1.3)
        chooser, steps = self.chooser(2, seconds)
        timed_after = None
        for i in range(3 * speed.WINDOW):
            steps(1)
            if timed_after is None and not chooser.plan:
                timed_after = i + 1                             # the round's last step
        self.assertEqual(chooser.choice, 2)
        self.assertGreaterEqual(timed_after, 2 * speed.WINDOW)   # a whole window of two

    def test_with_big_batches_a_window_ends_after_its_seconds(self):
        # A step of a batch of 30000 takes a good part of a second: 40 of them on one thread
        # would be most of a short run.
        chooser, steps = self.chooser(2, lambda n: 0.5 if n == 1 else 0.3)
        steps(15)
        self.assertEqual((chooser.plan, chooser.choice), ([], 2))

    def test_strict_sums_make_the_numbers_the_same_for_any_thread_count(self):
        # In a new interpreter: MKL reads MKL_CBWR at its first product, long past in this one.
        # The batches of a default run: 64, and the last ones of the training and test sets (32,
        # 16). A batch of a few images can differ in some processes (seen at 5 on machine E):
        # there the chooser's own check keeps the count (SameNumbersTests).
        code = ("import torch, common; from plumbing import speed; speed.for_own_process(); "
                "model = common.FashionNeuralNetwork(); "
                "print(all(speed.same_numbers(model, torch.randn(n, 1, 28, 28), [2, 1]) "
                "for n in (64, 32, 16)))")
        result = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True,
                                text=True,
                                env={k: v for k, v in os.environ.items() if k != "MKL_CBWR"},
                                timeout=120)
        self.assertEqual(result.stdout.strip(), "True", result.stderr)

    def test_in_its_own_process_a_script_flushes_denormals_in_every_thread_of_torchs(self):
        # In a new interpreter, whose threads torch has not started yet: a product of 1e-30 and
        # 1e-9 is a denormal. After for_own_process both halves of it, each computed by one of
        # the two threads, are flushed to zero; without it, neither is (the check can fail).
        code = ("import sys, torch; from plumbing import speed\n"
                "if sys.argv[1] == 'own':\n"
                "    speed.for_own_process()\n"
                "torch.set_num_threads(2)\n"
                "y = torch.full((1 << 20,), 1e-30) * 1e-9\n"
                "print(bool((y[: 1 << 19] == 0).all()), bool((y[1 << 19:] == 0).all()))\n")
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                                "MKL_NUM_THREADS")}
        for how, expected in (("own", "True True"), ("host", "False False")):
            result = subprocess.run([sys.executable, "-c", code, how], cwd=HERE,
                                    capture_output=True,
                                    text=True, env=env, timeout=120)
            self.assertEqual(result.stdout.strip(), expected, result.stderr)

    def test_a_thread_count_the_user_set_is_obeyed_and_torchs_is_restored(self):
        before = torch.get_num_threads()
        model = nn.Linear(4, 2)
        optimizer = optim.SGD(model.parameters(), lr=0.1)
        cpu = torch.device("cpu")
        try:
            torch.set_num_threads(2)
            with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "2"}):
                with speed.threads_chosen(model, optimizer, cpu) as chooser:
                    self.assertIsNone(chooser)
            with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "", "MKL_NUM_THREADS": ""}), \
                    mock.patch.object(speed, "same_numbers", return_value=True):
                with speed.threads_chosen(model, optimizer, cpu) as chooser:
                    self.assertIsInstance(chooser, speed.ThreadChooser)
                    for _ in range(speed.WINDOW + 2):     # the steps reach the chooser
                        model(torch.ones(3, 4)).sum().backward()
                        optimizer.step()
                    self.assertIn(1, chooser.timed)                 # one thread, timed first
                    torch.set_num_threads(1)
                self.assertEqual(torch.get_num_threads(), 2)
        finally:
            torch.set_num_threads(before)

    def test_on_a_gpu_the_thread_count_is_left_alone(self):
        model = nn.Linear(4, 2)
        optimizer = optim.SGD(model.parameters(), lr=0.1)
        with speed.threads_chosen(model, optimizer, torch.device("cuda")) as chooser:
            self.assertIsNone(chooser)


class MemoryTests(unittest.TestCase):
    """Every flag of 05_beyond.py keeps memory bounded: one batch in memory at a time, no copy of
    the training set, freed blocks given back (docs/speed.md measures the full data)."""

    @staticmethod
    def live_tensor_bytes():
        storages = {}
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":
                storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        return sum(storages.values())

    def test_a_step_of_05_holds_one_batch_beside_the_training_set(self):
        n = 3000
        images, labels = torch.rand(n, 1, 28, 28) * 2 - 1, torch.arange(n) % 10
        trainloader = common.make_loader(TensorDataset(images, labels), n, shuffle=True)
        batch = images.nbytes
        before = self.live_tensor_bytes()
        args = argparse.Namespace(val_split=1, seed=0, batch_size=n)
        fitloader, _ = beyond.hold_out(trainloader, args, 0)
        loader = beyond.Mixup(beyond.Augmented(fitloader, shift=2, flip=True), alpha=0.2)
        for mixed, targets in loader:               # as common.train holds it while it trains
            extra = self.live_tensor_bytes() - before
            self.assertLess(extra, 1.1 * batch,
                            f"{extra / batch:.1f} batches besides the training set")
            del mixed, targets

    def test_freed_blocks_of_a_megabyte_and_more_go_back_to_the_system(self):
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            self.skipTest("glibc only")
        child = """if True:
            import ctypes, sys
            from plumbing import speed
            if sys.argv[1] == "fixed":
                speed.for_own_process()
            libc = ctypes.CDLL(None)
            libc.malloc.restype = ctypes.c_void_p
            libc.free.argtypes = [ctypes.c_void_p]
            def rss():
                return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
            def touch_and_free(mb):
                p = libc.malloc(mb * 2 ** 20)
                ctypes.memset(p, 1, mb * 2 ** 20)
                libc.free(p)
            touch_and_free(30)                # freed, it would raise glibc's threshold to 30 MB
            before = rss()
            touch_and_free(20)
            print(rss() - before)
        """
        kept = {}
        for how in ("fixed", "glibc's own"):
            result = subprocess.run([sys.executable, "-c", child, how], cwd=HERE,
                                    capture_output=True,
                                    text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            kept[how] = int(result.stdout) / 1024               # MB still held after the free
        # the reason for the fix, still there
        self.assertGreater(kept["glibc's own"], 15, kept)
        self.assertLess(kept["fixed"], 2, kept)

    def test_large_tensors_lie_in_huge_pages_unless_the_user_says_no(self):
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
        if not mode.exists() or "[never]" in mode.read_text():
            self.skipTest("this system gives no transparent huge pages (Linux only)")
        child = """if True:
            import sys
            import torch
            from plumbing import speed
            if sys.argv[1] == "own":
                speed.for_own_process()           # as in a script's own process, before a tensor
            x = torch.ones(2 ** 24)               # 64 MB, as the training images (188 MB)
            inside, huge = False, 0
            for line in open("/proc/self/smaps"):
                head = line.split()[0]
                if not head.endswith(":"):        # a mapping: its address range
                    low, high = (int(a, 16) for a in head.split("-"))
                    inside = low <= x.data_ptr() < high
                elif head == "AnonHugePages:" and inside:
                    huge = int(line.split()[1]) / 1024
            print(huge)
        """
        huge = {}
        for first, setting in (("own", None), ("host", None), ("own", "0")):
            env = {k: v for k, v in os.environ.items() if k != speed.HUGE_PAGES}
            if setting is not None:
                env[speed.HUGE_PAGES] = setting
            result = subprocess.run([sys.executable, "-c", child, first], cwd=HERE, env=env,
                                    capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 0, result.stderr)
            huge[first, setting] = float(result.stdout)          # MB of the tensor in huge pages
        self.assertGreater(huge["own", None], 32, huge)
        # Where every large allocation gets them (`always`), only the first can be checked.
        if "[madvise]" in mode.read_text():                      # only on request: torch's is ours
            self.assertEqual(huge["host", None], 0, huge)
            self.assertEqual(huge["own", "0"], 0, huge)


# A host, as a notebook's kernel is one: it runs 02_baseline.py's main() through the scripts'
# runner (as %run does: runpy, run_name "__main__"), then reports what it sees of itself.
HOST = r"""if True:
    import json, os, runpy, sys, threading
    import torch

    def denormals_flushed():
        # Denormals times 1.0, over enough numbers that every thread of torch's takes a share.
        x = torch.full((4_194_304,), 1e-39)
        return int(((x * 1.0) == 0).sum())

    def seen():
        return {"env": dict(os.environ), "threads": torch.get_num_threads(),
                "flushed": denormals_flushed()}

    before = seen()
    script = runpy.run_path(sys.argv[1])["main"].__globals__     # the script's own globals
    at_train = []

    def train(*args, **kwargs):
        at_train.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    real_train, script["train"] = script["train"], train
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    try:
        script["cli"].run_script(script["main"])
    except SystemExit as e:
        status = e.code
    print(json.dumps({"before": before, "after": seen(), "at_train": at_train,
                      "status": status}))
"""


class HostTests(unittest.TestCase):
    """A script run inside a host: no setting made in the host outlives the run."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        folder = Path(cls.tmp.name)
        write_fake_fashion_mnist(folder / "copy")
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", speed.STRICT_SUMS,
                            speed.HUGE_PAGES)}
        env.update(FASHION_MNIST_DIR=str(folder / "copy"), **{datafiles.SUBSET_VARIABLE: "1"})
        result = subprocess.run(
            [sys.executable, "-c", HOST, str(HERE / "02_baseline.py"), "--epochs", "2",
             "--data-dir", str(folder / "data"), "--out-dir", str(folder / "out"),
             "--no-download"], cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
        cls.report = json.loads(result.stdout.splitlines()[-1]) if result.stdout else None
        cls.stderr = result.stderr

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.assertIsNotNone(self.report, self.stderr[-3000:])
        self.assertEqual(self.report["status"], 0, self.stderr[-3000:])

    def test_training_starts_at_the_hosts_own_thread_count(self):
        self.assertEqual(self.report["at_train"], [self.report["before"]["threads"]])

    def test_the_host_keeps_its_environment_and_thread_count(self):
        before, after = self.report["before"], self.report["after"]
        self.assertEqual(after["env"], before["env"])
        self.assertEqual(after["threads"], before["threads"])

    def test_no_thread_of_the_host_flushes_denormals_after_the_run(self):
        self.assertEqual(self.report["before"]["flushed"], 0)
        self.assertEqual(self.report["after"]["flushed"], 0)


class OwnProcessTests(unittest.TestCase):
    """What tells a script's own process (python 02_baseline.py) from a host."""

    def test_a_script_started_by_python_owns_its_process(self):
        script = HERE / "02_baseline.py"
        for argv, owned in ((["python", str(script)], True),
                            (["python", "-W", "error", "02_baseline.py", "--epochs", "1"], True),
                            (["python", "-c", "...", str(script)], False),
                            (["python", "-m", "ipykernel_launcher", "-f", "k.json"], False),
                            (["python", "-m", "unittest"], False)):
            with self.subTest(argv=argv), unittest.mock.patch.object(sys, "orig_argv", argv):
                cwd = os.getcwd()
                try:
                    os.chdir(HERE)
                    self.assertEqual(speed.owns_process(script), owned)
                finally:
                    os.chdir(cwd)

    def test_in_its_own_process_a_script_flushes_denormals_and_asks_for_strict_sums(self):
        code = ("import sys, os, torch; sys.path.insert(0, '.'); from plumbing import speed; "
                "speed.for_own_process(); x = torch.full((4_194_304,), 1e-39); "
                "print(int(((x * 1.0) == 0).sum()), os.environ[speed.STRICT_SUMS], "
                "os.environ[speed.HUGE_PAGES])")
        env = {k: v for k, v in os.environ.items()
               if k not in (speed.STRICT_SUMS, speed.HUGE_PAGES)}
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, text=True,
                             capture_output=True, timeout=120).stdout.split()
        self.assertEqual(out, ["4194304", "AUTO,STRICT", "1"])


class SameNumbersTests(unittest.TestCase):
    """The thread choice never changes a number: each batch size is checked first."""

    def test_a_batch_size_whose_products_differ_keeps_the_count_in_use(self):
        from common import FashionNeuralNetwork
        model = FashionNeuralNetwork(dropout=0.2)
        optimizer = torch.optim.Adam(model.parameters())
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            with unittest.mock.patch.object(speed, "same_numbers", return_value=False) as check, \
                    speed.threads_chosen(model, optimizer, torch.device("cpu")) as chooser:
                at_forward = []              # after the chooser's own hook: the count used
                model.register_forward_pre_hook(
                    lambda *_: at_forward.append(torch.get_num_threads()))
                for _ in range(3):
                    optimizer.zero_grad()
                    model(torch.randn(5, 784)).sum().backward()
                    optimizer.step()
            self.assertEqual(at_forward, [2, 2, 2])
            self.assertEqual(check.call_count, 1)       # once the chooser has started, once a size
            self.assertFalse(chooser.on)
        finally:
            torch.set_num_threads(before)

    def test_the_check_draws_no_random_number_of_the_run(self):
        from common import FashionNeuralNetwork

        class ForgetsEval(FashionNeuralNetwork):      # as 05_beyond.py --no-eval's network
            def eval(self):
                return self
        model, images = ForgetsEval(dropout=0.5), torch.randn(4, 1, 28, 28)
        state = torch.get_rng_state()
        speed.same_numbers(model, images, [1, 2])
        self.assertTrue(torch.equal(torch.get_rng_state(), state))

    def test_the_check_compares_forward_and_backward_on_every_count(self):
        from common import FashionNeuralNetwork
        model = FashionNeuralNetwork()
        counts = []
        real = torch.set_num_threads

        def record(n):
            counts.append(n)
            real(n)
        before = torch.get_num_threads()
        try:
            with unittest.mock.patch.object(torch, "set_num_threads", record):
                speed.same_numbers(model, torch.randn(3, 1, 28, 28), [1, 2])
            self.assertEqual(counts[:2], [1, 2])
            self.assertIsNone(next(iter(model.parameters())).grad)   # the model itself untouched
        finally:
            torch.set_num_threads(before)

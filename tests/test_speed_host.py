"""The speed settings act only where they may: a host that runs a script is left as it was found."""
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch

from plumbing import datafiles, speed

ROOT = Path(__file__).resolve().parent.parent

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
        from test_scripts import write_fake_fashion_mnist
        cls.tmp = tempfile.TemporaryDirectory()
        folder = Path(cls.tmp.name)
        write_fake_fashion_mnist(folder / "copy")
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", speed.STRICT_SUMS,
                            speed.HUGE_PAGES)}
        env.update(FASHION_MNIST_DIR=str(folder / "copy"), **{datafiles.SUBSET_VARIABLE: "1"})
        result = subprocess.run(
            [sys.executable, "-c", HOST, str(ROOT / "02_baseline.py"), "--epochs", "2",
             "--data-dir", str(folder / "data"), "--out-dir", str(folder / "out"),
             "--no-download"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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
        script = ROOT / "02_baseline.py"
        for argv, owned in ((["python", str(script)], True),
                            (["python", "-W", "error", "02_baseline.py", "--epochs", "1"], True),
                            (["python", "-c", "...", str(script)], False),
                            (["python", "-m", "ipykernel_launcher", "-f", "k.json"], False),
                            (["python", "-m", "unittest"], False)):
            with self.subTest(argv=argv), unittest.mock.patch.object(sys, "orig_argv", argv):
                cwd = os.getcwd()
                try:
                    os.chdir(ROOT)
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
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
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


if __name__ == "__main__":
    unittest.main()

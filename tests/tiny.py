"""The tests' shared helpers: a tiny Fashion-MNIST written as IDX files, TinyDataTestCase, the
scripts' main() run in-process (run_main), and the child runs that a test class starts for itself.

No test touches the internet. The tiny data set has fewer images than Fashion-MNIST, so no digest
of the data set's own files can match it: the scripts take such a subset only where
FASHION_MNIST_SUBSET=1, which TinyDataTestCase and the child runs set (tiny_env).
"""
import contextlib
import gzip
import importlib
import io
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from pathlib import Path
from unittest import mock

import torch
from torch import nn, optim
from torch.utils.data import TensorDataset

import common
from common import FashionNeuralNetwork
from plumbing import cli, datafiles, photo, saving

HERE = Path(__file__).resolve().parent.parent          # the repository's root: the scripts
data_step = importlib.import_module("01_data")
baseline = importlib.import_module("02_baseline")
dropout = importlib.import_module("03_dropout")
inference = importlib.import_module("04_inference")
beyond = importlib.import_module("05_beyond")

N_TRAIN, N_TEST = 330, 100          # 330 = 5 batches of 64 and a short one of 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REAL_DATA = datafiles.SYSTEM_COPY.is_dir()
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- a tiny Fashion-MNIST

def idx_bytes(tensor):
    """An uint8 tensor as an IDX file: magic 0x08 0x0N, N big-endian sizes, then the bytes."""
    sizes = b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    header = (0x0800 | tensor.dim()).to_bytes(4, "big") + sizes
    return header + tensor.numpy().tobytes()


def fake_split(n, seed):
    """n noisy images whose class shows as a bright band at rows 2*label..2*label+4, pixels 0 to
    255."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 120, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 * label:2 * label + 4, 4:24] = 255
    images[:, 0, 0] = 0
    return images, labels.to(torch.uint8)


def write_fake_fashion_mnist(folder, gz=True):
    """The four IDX files of a tiny Fashion-MNIST in `folder`, gzipped like the originals by
    default."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": fake_split(N_TRAIN, 1), "t10k": fake_split(N_TEST, 2)}
    for prefix, (images, labels) in splits.items():
        for name, tensor in ((f"{prefix}-images-idx3-ubyte", images),
                             (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(tensor)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return splits


def tiny_env(local_copy):
    """The environment that points a script at a tiny local copy and lets it take a subset."""
    return {"FASHION_MNIST_DIR": str(local_copy), datafiles.SUBSET_VARIABLE: "1"}


def write_mislabelled_copy(folder, n):
    """A tiny local copy of Fashion-MNIST whose first n test labels are one class off; returns
    the test labels."""
    labels = write_fake_fashion_mnist(folder)["t10k"][1].clone()
    labels[:n] = (labels[:n] + 1) % 10
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return labels


def normalised_by_hand(images):
    """uint8 images (N, 28, 28) as the tutorial's ToTensor() and Normalize((0.5,), (0.5,)) make
    them: (N, 1, 28, 28) in [-1, 1]."""
    return ((images.float() / 255 - 0.5) / 0.5)[:, None]


# ----------------------------------------------------------------------------- running the scripts

def run_main(module, *args):
    """Run a script's main() in-process as the command line does (cli.run_script); return
    (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run_script(lambda: module.main([str(a) for a in args]))
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


def prepared_photo(path):
    """A photo prepared as 04_inference.py --image prepares it: (1, 1, 28, 28) in [-1, 1], and the
    note."""
    pixels, note = photo.prepare_image(path)
    return common.normalize(pixels), note


def is_png(path):
    path = Path(path)
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


def leftovers(folder):
    """Temporary files that an atomic write left behind."""
    return [p.name for p in Path(folder).rglob("*.tmp")]


def watch_networks(test):
    """Record each forward pass of any FashionNeuralNetwork until the test ends, in order: the
    network, whether it was in train mode, whether gradients were on, and its input batch."""
    passes = []

    def record(module, inputs):
        if isinstance(module, FashionNeuralNetwork):
            x = inputs[0].detach().clone()
            passes.append((module, module.training, torch.is_grad_enabled(), x))

    test.addCleanup(torch.nn.modules.module.register_module_forward_pre_hook(record).remove)
    return passes


def keep_figures(test, write=False):
    """Until the test ends, the scripts' figures are kept by file name (returned), and written as
    PNG files only with `write`: other tests check the files, and writing them is most of a short
    run's time."""
    figures = {}
    save_figures = saving.save_figures

    def keep(pictures):
        figures.update({Path(path).name: fig for path, fig in pictures.items()})
        if write:
            save_figures(pictures)

    patch = mock.patch.object(saving, "save_figures", keep)
    patch.start()
    test.addCleanup(patch.stop)
    return figures


def quietly(function, *args, **kwargs):
    """function(*args, **kwargs) with its printing kept from the test's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def tiny_loader(n=8, batch_size=4):
    images, labels = torch.randn(n, 1, 28, 28), torch.arange(n) % 10
    return common.make_loader(TensorDataset(images, labels), batch_size, shuffle=False)


def train_tiny(trainloader, testloader, epochs=1):
    model = common.FashionNeuralNetwork()
    optimizer = optim.Adam(model.parameters(), lr=0.003)
    return quietly(common.train, model, trainloader, testloader, nn.NLLLoss(), optimizer, epochs,
                   torch.device("cpu"))


class TinyDataTestCase(unittest.TestCase):
    """Each test gets a fresh temp folder and one thread; FASHION_MNIST_DIR points at a tiny local
    copy, so no test reads the system copy or the network."""

    @classmethod
    def setUpClass(cls):
        cls._tmp_class = tempfile.TemporaryDirectory()
        cls.source = Path(cls._tmp_class.name) / "local-copy"
        cls.splits = write_fake_fashion_mnist(cls.source)

    @classmethod
    def tearDownClass(cls):
        cls._tmp_class.cleanup()

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.data_dir, self.out_dir = self.tmp / "data", self.tmp / "out"
        env = mock.patch.dict(os.environ, tiny_env(self.source))
        env.start()
        self.addCleanup(env.stop)
        # A tiny batch gains nothing from a second thread: the other core is left to the child
        # runs beside the tests. Put back when the test ends.
        self.addCleanup(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(1)

    def raw(self, name="train-images-idx3-ubyte"):
        """A file of the data set's raw folder under --data-dir."""
        return self.data_dir / "FashionMNIST" / "raw" / name

    def load(self):
        """The loaders, quietly: unpacking prints a line per file."""
        with contextlib.redirect_stdout(io.StringIO()):
            return common.load_data(self.data_dir, download=False)

    def paths(self):
        return ["--data-dir", self.data_dir, "--out-dir", self.out_dir, "--no-download"]

    def train_script(self, module, *args):
        status, out, err = run_main(module, *self.paths(), "--epochs", 1, *args)
        self.assertEqual(status, 0, err)
        return out

    def assert_refused(self, module, args, *phrases):
        """The script stops with status 2 and a message holding each phrase, without a traceback."""
        status, out, err = run_main(module, *self.paths(), *args)
        self.assertEqual(status, 2, f"{args}: {err}")
        for phrase in phrases:
            self.assertIn(phrase, err, args)
        self.assertNotIn("Traceback", err)
        return err

    _trained = {}

    def use_trained_dropout(self):
        """Put a dropout.pt from one epoch of 03_dropout.py in the output folder, trained once per
        class."""
        cls = type(self)
        if cls not in self._trained:
            folder = Path(cls._tmp_class.name) / "trained"
            status, out, err = run_main(dropout, "--data-dir", folder / "data", "--out-dir", folder,
                                        "--no-download", "--epochs", 1)
            self.assertEqual(status, 0, err)
            self._trained[cls] = (folder / "dropout.pt").read_bytes()
        self.out_dir.mkdir(exist_ok=True)
        (self.out_dir / "dropout.pt").write_bytes(self._trained[cls])


# -------------------------------------------------------------------------- runs in child processes

class ChildRuns:
    """The child runs of one test class, in a temporary folder that holds a tiny local copy: made
    in the class's setUpClass, so that they run beside its tests, and ended with the class."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.folder = Path(self._tmp.name)
        self.local_copy = self.folder / "local-copy"
        write_fake_fashion_mnist(self.local_copy)
        self.env = tiny_env(self.local_copy)
        self.runs = []

    def add(self, run):
        self.runs.append(run)
        return run

    def start(self):
        for run in self.runs:                # the watching threads only once every child is forked
            run.start()

    def close(self):
        for run in self.runs:
            run.kill()
            if isinstance(run, ForkedRun):
                run.thread.join(10)
        self._tmp.cleanup()


class ForkedRun:
    """`python SCRIPT ARGS` in a child process, forked from this one in a test class's setUpClass
    (ChildRuns): it starts with torch already imported (4 s saved) and runs beside the class's
    tests. With `sig`, it is sent that signal, for real, once its first epoch line appears."""

    def __init__(self, script, args, folder, env, sig=None, stdout=None):
        self.out_path, self.err_path = folder / "stdout", folder / "stderr"
        self.out_path.write_text(""), self.err_path.write_text("")
        sys.stdout.flush(), sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            self._child([str(HERE / script), *map(str, args)], env, stdout or self.out_path)
        self.status = None
        # started by start()
        self.thread = threading.Thread(target=self._watch, args=(sig,), daemon=True)

    def start(self):
        self.thread.start()

    def _child(self, argv, env, stdout):
        status = 1
        try:
            with open(stdout, "w") as out, open(self.err_path, "w") as err:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
            for name, value in env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = str(value)
            # Ctrl-C raises KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # a SIGHUP stops it as it stops a run in a terminal, even where the suite itself
            # runs under nohup (which leaves it ignored, and the script keeps it so)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            # leave the other core to the tests
            torch.set_num_threads(1)
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(status)

    def _watch(self, sig):
        if sig is not None:
            deadline = time.monotonic() + 120
            while "Epoch: 1/" not in self.out_path.read_text() and time.monotonic() < deadline:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:                                   # it ended before its first epoch: say how
                    self.status = os.waitstatus_to_exitcode(status)
                    return
                time.sleep(0.05)
            os.kill(self.pid, sig)
        self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def wait(self, timeout=120):
        self.thread.join(timeout)
        if self.status is None:
            self.kill()
            raise AssertionError(f"the run did not end: {self.err_path.read_text()}")
        return self.status, self.out_path.read_text(), self.err_path.read_text()

    def kill(self):
        if self.status is None:                           # not reaped yet: the pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class StrictRun:
    """Every script, one after another in one new interpreter, as `python -OO -W
    error::DeprecationWarning`: no docstrings (--help must not need them), and a deprecation
    raised by what the scripts do with a library is an error. The libraries are imported first,
    so that what a library deprecates in its own import (matplotlib 3.6 does, with a newer
    pyparsing) stays its own business. Runs beside the class's tests."""

    DRIVER = """if True:
        import runpy, sys, traceback, warnings
        import matplotlib.figure, PIL.Image, torch, torchvision
        warnings.simplefilter("error", DeprecationWarning)
        folder, runs = sys.argv[1], [a.split() for a in sys.argv[2:]]
        for script, *args in runs:
            sys.argv = [script, *args, "--data-dir", folder + "/data", "--out-dir", folder + "/out",
                        "--no-download"]
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                print(f"{script} {' '.join(args)} -> {e.code}", flush=True)
            except BaseException:
                traceback.print_exc()
                print(f"{script} {' '.join(args)} -> traceback", flush=True)
    """
    RUNS = ["01_data.py", "02_baseline.py --epochs 1", "03_dropout.py --epochs 1",
            "04_inference.py",
            "05_beyond.py --epochs 2 --val-split 60 --sweep-dropout 0 0.2 --final-fit "
            "--schedule cosine --mixup 0.2 --augment shift+flip --weight-decay 0.01",
            "02_baseline.py --help"]

    def __init__(self, folder, local_copy):
        folder.mkdir()
        self.process = subprocess.Popen(
            [sys.executable, "-OO", "-c", self.DRIVER, str(folder),
             *self.RUNS], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **tiny_env(local_copy), "OMP_NUM_THREADS": "1"})

    def start(self):
        pass

    def wait(self, timeout=300):
        output, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, output, ""

    def kill(self):
        self.process.kill()
        self.process.wait()


class NotebookLaunch:
    """01_data.py started by a new interpreter as a notebook's !python starts it: MPLBACKEND names
    the kernel's backend, whose entry point is hidden here, as where matplotlib_inline is not
    installed. Runs beside the class's tests."""

    BACKEND = "module://matplotlib_inline.backend_inline"
    DRIVER = """if True:
        import importlib.metadata, os, runpy, sys
        entry_points = importlib.metadata.entry_points
        importlib.metadata.entry_points = lambda **kw: (
            () if kw.get("group") == "matplotlib.backend" else entry_points(**kw))
        sys.argv = sys.argv[1:]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        finally:
            print("MPLBACKEND after:", os.environ.get("MPLBACKEND"))
    """

    def __init__(self, folder, local_copy):
        folder.mkdir()
        self.out_dir = folder / "out"
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.DRIVER, str(HERE / "01_data.py"), "--data-dir",
             str(folder / "data"),
             "--out-dir", str(self.out_dir), "--no-download"], cwd=HERE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, **tiny_env(local_copy), "MPLBACKEND": self.BACKEND,
                 "OMP_NUM_THREADS": "1"})

    def start(self):
        pass

    def wait(self, timeout=300):
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def kill(self):
        self.process.kill()
        self.process.wait()

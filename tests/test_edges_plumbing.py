"""Edges a hostile user found: before the runner, beside it, and at the output folder."""
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

import torch

from plumbing import saving

ROOT = Path(__file__).resolve().parent.parent


def script_says(script, *args, env=None, code=None):
    """`python SCRIPT ARGS` (or code run as the host of it) in a new interpreter: (status, stderr)."""
    command = [sys.executable, "-c", code, script] if code else [sys.executable, script]
    result = subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, **(env or {})})
    return result.returncode, result.stderr


class BeforeTheRunnerTests(unittest.TestCase):
    """What stops the libraries from loading is said in one sentence, even for --help."""

    def assert_one_sentence(self, status, err, *phrases):
        self.assertEqual(status, 2, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        for phrase in phrases:
            self.assertIn(phrase, err)

    def test_a_python_without_torch(self):
        code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
        self.assert_one_sentence(*script_says("02_baseline.py", "--help", code=code),
                                 "has no torch", "pip install -r requirements.txt")

    def test_torchs_libraries_that_cannot_be_loaded(self):
        with tempfile.TemporaryDirectory() as fake:          # a torch whose libraries fail to map
            (Path(fake) / "torch").mkdir()
            (Path(fake) / "torch" / "__init__.py").write_text(
                "raise OSError('libtorch_cpu.so: failed to map segment from shared object')\n")
            self.assert_one_sentence(*script_says("01_data.py", "--help",
                                                  env={"PYTHONPATH": fake}),
                                     "could not be loaded", "ulimit -v")

    def test_a_thread_count_that_is_not_a_number(self):
        self.assert_one_sentence(*script_says("04_inference.py", "--help",
                                              env={"OMP_NUM_THREADS": "two"}),
                                 "OMP_NUM_THREADS is 'two'")

    def test_a_working_folder_that_was_deleted(self):
        code = ("import os, runpy, sys, tempfile; d = tempfile.mkdtemp(); os.chdir(d); "
                f"os.rmdir(d); sys.argv = sys.argv[1:]; sys.path[0] = {str(ROOT)!r}; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
        self.assert_one_sentence(*script_says(str(ROOT / "01_data.py"), "--help", code=code),
                                 "no longer exists")

    def test_a_huge_pages_value_that_torch_would_only_warn_about(self):
        self.assert_one_sentence(*script_says("01_data.py", "--help",
                                              env={"THP_MEM_ALLOC_ENABLE": "yes"}),
                                 "THP_MEM_ALLOC_ENABLE is 'yes'", "set it to 0")


class OutOfMemoryTests(unittest.TestCase):
    def test_an_allocation_that_fails_says_how_much_and_what_to_change(self):
        from plumbing import cli
        cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 100663296 bytes. Error code 12")
        for error, size in ((cpu, " (it asked for 96 MB)"), (MemoryError(), "")):
            with self.subTest(error=type(error).__name__), self.assertRaises(SystemExit) as stop, \
                    mock.patch("sys.stderr", new_callable=io.StringIO) as err:
                cli.run_script(lambda: (_ for _ in ()).throw(error))
            self.assertEqual(stop.exception.code, 1)
            self.assertEqual(err.getvalue(), f"error: out of memory{size}: pass a smaller "
                             "--batch-size, close other programs, or use a machine with more "
                             "memory.\n")

    def test_another_runtime_error_keeps_its_traceback(self):
        from plumbing import cli
        with self.assertRaises(RuntimeError):
            cli.run_script(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")))


class OutputFolderTests(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)

    def test_a_dangling_link_or_a_loop_is_named_as_a_link(self):
        (self.tmp / "dangling").symlink_to(self.tmp / "nowhere")
        (self.tmp / "a").symlink_to(self.tmp / "b")
        (self.tmp / "b").symlink_to(self.tmp / "a")
        for name in ("dangling", "a"):
            with self.subTest(name), mock.patch("sys.stderr"), \
                    self.assertRaises(SystemExit):
                with mock.patch("builtins.print") as said:
                    saving.prepare_out_dir(self.tmp / name)
            self.assertIn("is a link to", said.call_args[0][0])
            self.assertNotIn("is a file", said.call_args[0][0])

    def test_two_runs_saving_into_one_folder_leave_one_runs_set(self):
        real_replace, first = os.replace, threading.Event()

        def slow_replace(src, dst):              # run A pauses between its two renames
            real_replace(src, dst)
            if threading.current_thread().name == "A" and not first.is_set():
                first.set()
                time.sleep(0.5)

        def save(name):
            saving.write_set({self.tmp / "history.json": lambda f: f.write(name.encode()),
                              self.tmp / "model.pt": lambda f: f.write(name.encode())})
        with mock.patch.object(os, "replace", slow_replace):
            a = threading.Thread(target=save, args=("A",), name="A")
            a.start()
            first.wait(5)
            b = threading.Thread(target=save, args=("B",), name="B")
            b.start()
            a.join(10), b.join(10)
        contents = {(self.tmp / n).read_text() for n in ("history.json", "model.pt")}
        self.assertEqual(len(contents), 1, contents)

    def test_a_killed_writers_temporary_files_are_removed_by_the_next_save(self):
        stale = saving.temporary_name(self.tmp / "baseline.pt")     # as a kill -9 leaves one
        stale.write_bytes(b"half")
        mine = self.tmp / "notes.tmp"                                # not a name of ours
        mine.write_text("keep")
        saving.write_json(self.tmp / "history.json", {"a": 1})
        self.assertFalse(stale.exists())
        self.assertTrue(mine.exists())


class CheckpointWrapperTests(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        from common import FashionNeuralNetwork
        self.network = FashionNeuralNetwork
        self.weights = FashionNeuralNetwork().state_dict()

    def test_torch_compile_and_dataparallel_prefixes_are_the_same_network(self):
        for prefix, wrapper in (("_orig_mod.", "torch.compile"), ("module.", "DataParallel")):
            path = self.tmp / f"{wrapper}.pth"
            torch.save({prefix + k: v for k, v in self.weights.items()}, path)
            model, checkpoint = saving.read_checkpoint(path, self.network, torch.device("cpu"))
            self.assertEqual(checkpoint["wrapper"], wrapper)
            for k, v in model.state_dict().items():
                self.assertTrue(torch.equal(v, self.weights[k]), k)

    def test_a_checkpoint_of_other_classes_is_refused(self):
        checkpoint = saving.checkpoint(self.weights, 0.2, {"epoch": 1})
        checkpoint["classes"] = [str(digit) for digit in range(10)]
        torch.save(checkpoint, self.tmp / "digits.pt")
        with self.assertRaisesRegex(saving.BadFile, "other classes"):
            saving.read_checkpoint(self.tmp / "digits.pt", self.network, torch.device("cpu"))


if __name__ == "__main__":
    unittest.main()

"""Guards the command line: each flag's range, a learner's mistakes and odd numbers told in one
sentence, a blow-up's advice, stops by a real signal, every script under a strict interpreter."""
import errno
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import torch
from PIL import Image

import common
from common import FashionNeuralNetwork
from plumbing import cli, datafiles, saving
from tests.tiny import (HERE, N_TEST, N_TRAIN, ChildRuns, ForkedRun, StrictRun, TinyDataTestCase,
                        baseline, beyond, data_step, dropout, inference, is_png, leftovers,
                        run_main)


class MistakeTests(TinyDataTestCase):
    def test_bad_flag_values_name_the_flag_and_the_range(self):
        cases = [(baseline, ["--epochs", "0"], "--epochs", "at least 1"),
                 (baseline, ["--epochs", "-3"], "--epochs", "at least 1"),
                 (baseline, ["--batch-size", "0"], "--batch-size", "from 1 to 30000"),
                 (beyond, ["--batch-size", "30001"], "--batch-size", "from 1 to 30000"),
                 (baseline, ["--lr", "0"], "--lr", "greater than 0"),
                 (baseline, ["--lr", "-1"], "--lr", "greater than 0"),
                 (baseline, ["--lr", "nan"], "--lr", "greater than 0"),
                 (dropout, ["--dropout", "1"], "--dropout", "from 0 up to but not including 1"),
                 (dropout, ["--dropout", "-0.1"], "--dropout", "from 0 up to but not including 1"),
                 (beyond, ["--val-split", str(N_TRAIN)], "--val-split", f"from 1 to {N_TRAIN - 1}"),
                 (inference, ["--index", "-1"], "--index", "at least 0")]
        for module, args, *phrases in cases:
            with self.subTest(args=args):
                self.assert_refused(module, args, *phrases)

    def test_every_seed_the_flag_accepts_torch_accepts(self):
        top = str(2 ** 64 - 1)
        self.train_script(dropout, "--seed", top)
        self.train_script(beyond, "--seed", top, "--val-split", "60")
        for module in (baseline, dropout, beyond):
            for seed in ("-1", str(2 ** 64), "1.5"):
                self.assert_refused(module, ["--seed", seed], "--seed", f"from 0 to {top}")
        self.assert_refused(baseline, ["--batch-size", "30001"], "--batch-size", "from 1 to 30000")
        self.assert_refused(baseline, ["--lr", "inf"], "--lr", "greater than 0")
        self.assert_refused(beyond, ["--weight-decay", "inf"], "--weight-decay", "at least 0")

    def test_a_setting_that_points_nowhere_is_named(self):
        empty = self.tmp / "empty"
        empty.mkdir()
        for folder, named in ((self.tmp / "nowhere", "which is not a folder"),
                              (empty, "which lacks train-images-idx3-ubyte.gz")):
            with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(folder)}):
                self.assert_refused(data_step, [],
                                    f"FASHION_MNIST_DIR (it names {folder}, {named})")

    def test_index_outside_the_test_set(self):
        self.use_trained_dropout()
        self.assert_refused(inference, ["--index", str(N_TEST)], "--index",
                            f"use 0 to {N_TEST - 1}")

    def test_unavailable_device_names_the_available_ones(self):
        for device, available in (("cuda", torch.cuda.is_available()),
                                  ("mps", torch.backends.mps.is_available())):
            if not available:
                self.assert_refused(baseline, ["--device", device],
                                    f"--device {device} is not available", "cpu")

    def test_output_folder_that_is_a_file_or_not_writable(self):
        (self.tmp / "a-file").write_text("")
        with mock.patch.object(common, "load_data",
                               side_effect=AssertionError("loaded data first")):
            self.assert_refused(baseline, ["--out-dir", self.tmp / "a-file"],
                                "is a file or a link, not a folder")
            if Path("/proc/self").is_dir():              # a folder no one can write to, even root
                self.assert_refused(baseline, ["--out-dir", "/proc"], "cannot write to /proc")

    def test_an_empty_path_is_refused_not_read_as_not_given(self):
        for module, flag in ((data_step, "--data-dir"), (baseline, "--out-dir"),
                             (inference, "--checkpoint"),
                             (inference, "--image")):
            with self.subTest(flag):
                self.assert_refused(module, [flag, ""], flag, "an empty path")

    def test_a_path_that_cannot_be_read_and_a_decoders_own_exception_are_one_sentence(self):
        self.use_trained_dropout()
        denied = PermissionError(errno.EACCES, "Permission denied", str(self.tmp / "locked"))
        with mock.patch.object(datafiles, "ensure_raw_files", side_effect=denied):
            err = self.assert_refused(baseline, [],
                                      f"cannot use {self.tmp / 'locked'} (Permission denied)")
        self.assertEqual(err.count("\n"), 1, err)
        Image.new("RGB", (30, 30), "white").save(self.tmp / "shirt.png")
        for exception in (struct.error("unpack requires a buffer"), IndexError("list index"),
                          MemoryError()):
            with self.subTest(type(exception).__name__), mock.patch.object(Image.Image, "load",
                                                                           side_effect=exception):
                self.assert_refused(inference, ["--image", self.tmp / "shirt.png"],
                                    "shirt.png cannot be decoded")


class DivergenceTests(TinyDataTestCase):
    """A blow-up keeps the epochs before it, and its advice names the settings in use; settings
    that cannot train are refused first."""

    def diverge(self, module, *args):
        """Run `module` with its network's weights turned to NaN after the first epoch, as too
        large a learning rate does; its error output."""
        real_keep = saving.keep_weights

        def poisoned(weights, model, epoch, *rest):
            weights = real_keep(weights, model, epoch, *rest)
            if epoch == 1:            # the second epoch blows up
                with torch.no_grad():
                    model.layer_input.weight.fill_(float("nan"))
            return weights

        with mock.patch.object(saving, "keep_weights", poisoned):
            status, out, err = run_main(module, *self.paths(), *args)
        self.assertEqual(status, 1, err)
        return err

    def test_divergence_keeps_the_epochs_before_it(self):
        err = self.diverge(baseline, "--epochs", 3)
        self.assertIn("smaller --lr", err)
        history = json.loads((self.out_dir / "baseline_history.json").read_text())
        self.assertEqual(len(history["test_losses"]), 1)
        self.assertTrue(is_png(self.out_dir / "baseline_loss.png"))
        for name in ("baseline.pt", "baseline_best.pt"):
            checkpoint = torch.load(self.out_dir / name, weights_only=True)
            self.assertEqual(checkpoint["epoch"], 1)
            self.assertTrue(all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values()))

    def test_a_huge_learning_rate_stops_with_advice(self):
        status, out, err = run_main(baseline, *self.paths(), "--epochs", 5, "--lr", 1e6)
        self.assertEqual(status, 1, out + err)
        self.assertIn("smaller --lr", err)
        for name in ("baseline.pt", "baseline_best.pt"):
            if (self.out_dir / name).exists():
                checkpoint = torch.load(self.out_dir / name, weights_only=True)
                weights = checkpoint["state_dict"].values()
                self.assertTrue(all(torch.isfinite(w).all() for w in weights))

    def test_the_advice_is_a_smaller_lr_than_the_one_in_use(self):
        err = self.diverge(beyond, "--epochs", 2)
        self.assertIn("with --lr 0.003: try a smaller --lr, such as 0.0003", err)
        err = self.diverge(beyond, "--epochs", 2, "--lr", 0.5, "--weight-decay", 0.1)
        self.assertIn("with --lr 0.5: try a smaller --lr, such as 0.003", err)   # the default

    def test_a_weight_decay_that_shrinks_weights_past_zero_is_refused_before_training(self):
        with mock.patch.object(common, "load_data", side_effect=AssertionError("trained first")):
            self.assert_refused(beyond, ["--weight-decay", 1000], "argument --weight-decay",
                                "1000 times --lr 0.003 is 3", "below 333.333")
            self.assert_refused(beyond, ["--weight-decay", 10, "--lr", 0.1],
                                "argument --weight-decay")
        # 0.9: it trains
        self.assertEqual(beyond.parse_args(["--weight-decay", "300"]).weight_decay, 300)


class EdgeNumberTests(TinyDataTestCase):
    """Zero losses, one epoch, no mistakes: each told truly."""

    def test_a_validation_loss_of_zero_is_summed_up_and_05_still_tests_once(self):
        real_train = common.train

        def perfect(*args, **kwargs):
            run = real_train(*args, **kwargs)
            run.test_losses[:] = [0.0] * run.epochs
            return run

        with mock.patch.object(common, "train", perfect):
            out = self.train_script(beyond, "--val-split", 60)
        self.assertIn("Lowest validation loss: 0.000", out)
        self.assertIn("Test set, once, with the weights of epoch 1", out)

    def test_one_epoch_is_one_epoch_and_none_is_none(self):
        out = self.train_script(beyond, "--val-split", 60, "--final-fit")
        self.assertIn("Saved 1 epoch to", out)
        self.assertIn("for the 1 epoch chosen", out)
        self.assertIn("with the final fit's 1 epoch:", out)
        real_train = common.train

        def stopped(*args, **kwargs):
            run = real_train(*args, **kwargs)
            run.stopped = "interrupted"
            return run

        with mock.patch.object(baseline, "train", stopped):
            status, out2, err = run_main(baseline, *self.paths(), "--epochs", 1)
        self.assertEqual(status, 130)
        self.assertIn("Kept the 1 completed epoch;", err)
        self.assertIsNone(re.search(r"\b1 epochs\b", out + out2 + err))
        # and a stop in the first epoch keeps none
        with mock.patch.object(baseline, "train", return_value=common.Run(stopped="interrupted")):
            status, out, err = run_main(baseline, *self.paths(), "--epochs", 1)
        self.assertEqual(status, 130)
        self.assertIn("No epoch was completed; run again", err)
        self.assertNotIn("Kept the 0", err)

    def test_04_with_no_mistakes_names_no_confused_pair(self):
        self.use_trained_dropout()
        right = self.load()[1].dataset.tensors[1]                    # every answer the label
        with mock.patch.object(inference, "predict",
                               side_effect=lambda model, images, device: right):
            status, out, err = run_main(inference, *self.paths())
        self.assertEqual(status, 0, err)
        self.assertIn("Confused most often: none; no test image was taken for another class", out)
        self.assertNotIn("T-shirt/top and T-shirt/top", out)


class StopTests(unittest.TestCase):
    """Ctrl-C, SIGTERM and SIGHUP, sent for real to a running 02_baseline.py (a child run of
    100000 epochs each): a polite stop that keeps the completed epochs."""

    @classmethod
    def setUpClass(cls):
        children = ChildRuns()
        cls.addClassCleanup(children.close)
        cls.stopped = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            folder = children.folder / sig.name
            folder.mkdir()
            args = ["--data-dir", folder / "data", "--out-dir", folder / "out", "--no-download",
                    "--epochs", 100000]
            cls.stopped[sig] = children.add(ForkedRun("02_baseline.py", args, folder,
                                                      children.env, sig))
        children.start()

    def assert_stopped_politely(self, sig, status, said):
        run = self.stopped[sig]
        exit_status, out, err = run.wait()
        out_dir = run.out_path.parent / "out"
        self.assertEqual(exit_status, status, err)
        self.assertNotIn("Traceback", err)
        self.assertIn(said, out)
        self.assertIn("Kept the", err)
        history = json.loads((out_dir / "baseline_history.json").read_text())
        epochs = len(history["test_losses"])
        self.assertGreaterEqual(epochs, 1)
        self.assertEqual({len(v) for k, v in history.items() if k != "validated_on"}, {epochs})
        self.assertTrue(is_png(out_dir / "baseline_loss.png"))
        _, checkpoint = saving.load_checkpoint(out_dir / "baseline.pt", FashionNeuralNetwork,
                                               torch.device("cpu"))
        self.assertEqual(checkpoint["epoch"], epochs)
        self.assertEqual(leftovers(out_dir), [])

    def test_ctrl_c_keeps_the_completed_epochs_and_exits_130(self):
        self.assert_stopped_politely(signal.SIGINT, 130, "Interrupted during epoch")

    def test_sigterm_is_a_polite_stop_too_and_exits_143(self):
        self.assert_stopped_politely(signal.SIGTERM, 143, "Terminated during epoch")

    def test_sighup_a_closed_terminal_is_a_polite_stop_too_and_exits_129(self):
        # Written to files here, so the messages are kept; to a closed terminal, they are dropped.
        self.assert_stopped_politely(signal.SIGHUP, 129, "Hung up during epoch")

    def test_under_nohup_a_hangup_stays_ignored(self):
        for sig in (signal.SIGHUP, signal.SIGTERM):          # as nohup, or a parent, left them
            previous = signal.signal(sig, signal.SIG_IGN)
            self.addCleanup(signal.signal, sig, previous)
        with mock.patch.object(signal, "signal", wraps=signal.signal) as installed:
            status, out, err = run_main(baseline, "--help")
        self.assertEqual(status, 0, err)
        self.assertNotIn(cli._terminate, [call.args[1] for call in installed.call_args_list])
        for sig in (signal.SIGHUP, signal.SIGTERM):
            self.assertIs(signal.getsignal(sig), signal.SIG_IGN)


class StrictInterpreterTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        children = ChildRuns()
        cls.addClassCleanup(children.close)
        cls.strict = children.add(StrictRun(children.folder / "strict", children.local_copy))
        children.start()

    def test_every_script_runs_under_python_OO_and_deprecation_warnings_as_errors(self):
        status, output, _ = self.strict.wait()
        self.assertEqual(status, 0, output[-3000:])
        self.assertFalse("Traceback" in output, output[output.find("Traceback"):][:3000])
        for run in StrictRun.RUNS:
            self.assertIn(f"{run.split()[0]} {' '.join(run.split()[1:])} -> 0", output)
        # --help, without the docstring
        self.assertIn("--epochs EPOCHS", output)



def script_says(script, *args, env=None, code=None):
    """`python SCRIPT ARGS`, or `code` as its host, in a new interpreter: (status, stderr)."""
    command = [sys.executable, "-c", code, script] if code else [sys.executable, script]
    result = subprocess.run([*command, *args], cwd=HERE, capture_output=True, text=True,
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

    def test_a_python_without_torch_or_matplotlib(self):
        for package in ("torch", "matplotlib"):
            code = (f"import runpy, sys; sys.modules[{package!r}] = None; sys.argv = sys.argv[1:];"
                    " runpy.run_path(sys.argv[0], run_name='__main__')")
            with self.subTest(package=package):
                self.assert_one_sentence(*script_says("02_baseline.py", "--help", code=code),
                                         f"has no {package}", "pip install -r requirements.txt")

    def test_torchs_libraries_that_cannot_be_loaded(self):
        with tempfile.TemporaryDirectory() as fake:          # a torch whose libraries fail to map
            (Path(fake) / "torch").mkdir()
            (Path(fake) / "torch" / "__init__.py").write_text(
                "raise OSError('libtorch_cpu.so: failed to map segment from shared object')\n")
            self.assert_one_sentence(*script_says("01_data.py", "--help",
                                                  env={"PYTHONPATH": fake}),
                                     "could not be loaded", "ulimit -v")

    def test_an_interpreter_that_leaves_the_scripts_folder_off_the_path(self):
        for flag in ("-I", "-P"):                 # isolated, safe path: sys.path[0] is not HERE
            for script in ("01_data.py", "02_baseline.py", "03_dropout.py", "04_inference.py",
                           "05_beyond.py"):
                with self.subTest(flag=flag, script=script):
                    result = subprocess.run([sys.executable, flag, str(HERE / script), "--help"],
                                            cwd=tempfile.gettempdir(), capture_output=True,
                                            text=True, timeout=120)
                    self.assertEqual((result.returncode, result.stderr), (0, ""))
                    self.assertIn("usage:", result.stdout)

    def test_a_working_folder_that_was_deleted(self):
        code = ("import os, runpy, sys, tempfile; d = tempfile.mkdtemp(); os.chdir(d); "
                f"os.rmdir(d); sys.argv = sys.argv[1:]; sys.path[0] = {str(HERE)!r}; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
        self.assert_one_sentence(*script_says(str(HERE / "01_data.py"), "--help", code=code),
                                 "no longer exists")


class OutOfMemoryTests(unittest.TestCase):
    def test_an_allocation_that_fails_says_what_to_change(self):
        cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 100663296 bytes. Error code 12")
        for error in (cpu, MemoryError()):
            with self.subTest(error=type(error).__name__), self.assertRaises(SystemExit) as stop, \
                    mock.patch("sys.stderr", new_callable=io.StringIO) as err:
                cli.run_script(lambda: (_ for _ in ()).throw(error))
            self.assertEqual(stop.exception.code, 1)
            self.assertEqual(err.getvalue(), "error: out of memory: pass a smaller --batch-size, "
                             "close other programs, or use a machine with more memory.\n")

    def test_another_runtime_error_keeps_its_traceback(self):
        with self.assertRaises(RuntimeError):
            cli.run_script(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")))

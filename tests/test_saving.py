"""Guards a run's files: each write whole or not made, a script's files one set, a failure told by
its true cause, what 03 and 04 read back refused or skipped with a reason, the output streams."""
import argparse
import contextlib
import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zipfile
from pathlib import Path
from unittest import mock

import torch
from PIL import Image

import common
from common import FashionNeuralNetwork
from plumbing import cli, errors, saving
from tests.tiny import (HERE, ChildRuns, ForkedRun, TinyDataTestCase, baseline, data_step, dropout,
                        inference, is_png, leftovers, run_main)


def as_script(body):
    """A stand-in for a script module whose main() runs `body`."""
    return argparse.Namespace(main=lambda argv: body() or 0)


def write_json(path, obj):
    """`obj` written to `path` as JSON, as a set of one file, as 05 writes beyond_seeds.json."""
    saving.write_set({path: lambda f: f.write(saving.json_bytes(obj))})


class WriteErrorTests(TinyDataTestCase):
    """Each failed write says its own cause and what to do; the cleanup never hides it."""

    FIXES = {errno.ENOSPC: "Free some space on that disk",
             errno.EDQUOT: "Free some space within your disk quota",
             errno.EFBIG: "Raise the largest file this process may write (ulimit -f)",
             errno.ENOENT: "Check that the folder is there and that nothing removes files in it",
             errno.EROFS: "Remount that disk writable",
             errno.ENAMETOOLONG: "Choose a shorter folder path",
             errno.EACCES: "Make that folder writable",
             errno.EPERM: "Make that folder and its files writable",
             errno.EISDIR: "Move away the folder of that name",
             errno.EIO: "Check that disk and folder"}

    def test_each_errno_names_its_cause_and_only_a_full_disk_or_quota_speaks_of_space(self):
        self.out_dir.mkdir()
        for code, fix in self.FIXES.items():
            with self.subTest(errno.errorcode[code]):
                error = OSError(code, os.strerror(code))
                # As on a read-only disk or with a name too long: the cleanup fails as the write
                # did.
                path = self.out_dir / ("gone" if code == errno.ENOENT else "") / "a.json"
                with mock.patch.object(saving, "open", side_effect=error, create=True), \
                        mock.patch.object(Path, "unlink",
                                          side_effect=OSError(code, os.strerror(code), "x.tmp")):
                    status, out, err = run_main(as_script(lambda: write_json(path, {})))
                self.assertEqual(status, 1, err)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn(f"error: could not write {path} ({os.strerror(code)}, "
                              f"{errno.errorcode[code]})", err)
                self.assertIn(f"the file was left as it was. {fix} or pass another --out-dir", err)
                self.assertEqual("space" in err, code in (errno.ENOSPC, errno.EDQUOT), err)

    def test_a_temporary_file_removed_while_written_is_a_missing_file_not_a_full_disk(self):
        self.out_dir.mkdir()
        # the folder is there: its temporary file was removed before the rename
        with mock.patch.object(saving.os, "replace",
                               side_effect=FileNotFoundError(errno.ENOENT,
                                                             "No such file or directory")), \
                self.assertRaises(errors.WriteError) as caught:
            write_json(self.out_dir / "a.json", {})
        self.assertIn("(No such file or directory, ENOENT)", str(caught.exception))
        self.assertEqual(caught.exception.fix,
                         "Check that the folder is there and that nothing removes files in it")

    def test_a_name_too_long_is_told_as_such_not_as_its_temporary_files_cleanup(self):
        self.out_dir.mkdir()
        with self.assertRaises(errors.WriteError) as caught:       # a real ENAMETOOLONG, twice
            write_json(self.out_dir / ("x" * 250 + ".json"), {})
        self.assertIn("File name too long", str(caught.exception))
        self.assertEqual(caught.exception.fix, "Choose a shorter folder path")

    def test_a_file_size_limit_is_told_as_such_and_does_not_kill_the_run(self):
        # A real limit (ulimit -f) in a child process. Python ignores SIGXFSZ, so a write past it
        # fails with EFBIG instead of killing the run. The child stands torch and torchvision in
        # for themselves: saving's writes do not use them, and importing them would take seconds.
        child = """if True:
            import resource, sys, types
            for name in ("torch", "torchvision", "torchvision.datasets"):
                sys.modules[name] = types.ModuleType(name)
            sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
            resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))
            from plumbing import errors, saving
            try:
                saving.write_set({sys.argv[1]: lambda f: f.write(b"0.5, " * 50000)})
            except errors.WriteError as e:
                print(f"{e} | {e.fix}")
        """
        self.out_dir.mkdir()
        result = subprocess.run([sys.executable, "-c", child, str(self.out_dir / "big.json")],
                                cwd=HERE,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("(File too large, EFBIG)", result.stdout)
        self.assertIn("| Raise the largest file this process may write (ulimit -f)", result.stdout)
        self.assertEqual(leftovers(self.out_dir), [])
        self.assertFalse((self.out_dir / "big.json").exists())

    def test_a_failed_write_leaves_the_old_file_and_no_temporary(self):
        self.train_script(baseline)
        path = self.out_dir / "baseline.pt"
        before = path.read_bytes()
        real_save = torch.save

        def save_half_then_fail(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[:1000])
            raise OSError("disk full")

        state = common.FashionNeuralNetwork().state_dict()
        checkpoint = saving.checkpoint(state, 0.0, {"epoch": 9})
        with mock.patch.object(torch, "save",
                               save_half_then_fail), self.assertRaises(errors.WriteError):
            saving.write_set({path: lambda f: torch.save(checkpoint, f)})
        self.assertEqual(path.read_bytes(), before)
        self.assertEqual(leftovers(self.out_dir), [])
        with self.assertRaises(TypeError):             # json cannot write an object
            write_json(self.out_dir / "new.json", {"x": object()})
        self.assertFalse((self.out_dir / "new.json").exists())
        self.assertEqual(leftovers(self.out_dir), [])


class FailingFile(io.FileIO):
    """A temporary file being written whose writes raise `error` past its first `after` bytes."""
    error, after = None, 0

    def write(self, data):
        if self.tell() + len(data) > self.after:
            raise self.error
        return super().write(data)


def failing_open(error, which=".pt.", after=1000):
    """saving's open(), with the temporary files whose name holds `which` failing as FailingFile."""
    real_open = open

    def opener(path, mode="r", *args, **kwargs):
        if str(path).endswith(".tmp") and which in str(path):
            f = FailingFile(path, mode.replace("b", ""))
            f.error, f.after = error, after
            return f
        return real_open(path, mode, *args, **kwargs)
    return mock.patch.object(saving, "open", opener, create=True)


class RunSetTests(TinyDataTestCase):
    """A script's files are one set: after a failure or a stop, the whole new set or the whole
    earlier one."""

    def test_a_failure_anywhere_in_the_set_leaves_the_whole_earlier_set(self):
        # A disk that fills up, at once or (the checkpoint) after its first 1000 bytes: whichever
        # file it is, the message names it and the earlier run's whole set stays as it was.
        self.train_script(baseline)
        before = {p.name: p.read_bytes() for p in self.out_dir.iterdir()}
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        for which, after, name in (("history", 0, "baseline_history.json"),
                                   ("baseline.pt.", 1000, "baseline.pt"),
                                   ("_best.pt", 0, "baseline_best.pt"),
                                   ("_loss.png", 0, "baseline_loss.png")):
            with self.subTest(which), failing_open(full, which, after):
                status, out, err = run_main(baseline, *self.paths(), "--epochs", 2)
            self.assertEqual(status, 1, err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn(f"could not write {self.out_dir / name} (No space left on device", err)
            self.assertIn("not saved: baseline_history.json, baseline.pt, baseline_best.pt, "
                          "baseline_loss.png", err)
            self.assertEqual({p.name: p.read_bytes() for p in self.out_dir.iterdir()}, before)
            self.assertEqual(leftovers(self.out_dir), [])

    def test_a_stop_between_the_renames_lands_after_the_whole_new_set(self):
        self.train_script(baseline)
        real_replace = os.replace

        def replace_then_ctrl_c(source, target):
            real_replace(source, target)
            if str(target).endswith("_history.json"):
                signal.raise_signal(signal.SIGINT)          # a real Ctrl-C, after the first rename

        before = {p.name: p.read_bytes() for p in self.out_dir.iterdir() if p.name != saving.LOCK}
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)     # as in a terminal
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        with mock.patch.object(saving.os, "replace", replace_then_ctrl_c):
            status, out, err = run_main(baseline, *self.paths(), "--epochs", 2, "--seed", 1)
        self.assertEqual(status, 130, err)
        self.assertIn("Stopped: the files already written are complete.", err)
        # every file of the set is the new run's
        for name, data in before.items():
            self.assertNotEqual((self.out_dir / name).read_bytes(), data, name)
        _, last = saving.load_checkpoint(self.out_dir / "baseline.pt", FashionNeuralNetwork,
                                         torch.device("cpu"))
        self.assertEqual(last["epoch"], 2)
        self.assertEqual(leftovers(self.out_dir), [])

    def test_a_rename_that_fails_midway_names_the_stale_files(self):
        self.train_script(baseline)
        real_replace = os.replace

        def second_rename_fails(source, target):
            if str(target).endswith("baseline.pt"):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_replace(source, target)

        with mock.patch.object(saving.os, "replace", second_rename_fails):
            status, out, err = run_main(baseline, *self.paths(), "--epochs", 2)
        self.assertEqual(status, 1, err)
        self.assertIn("(Input/output error, EIO): saved: baseline_history.json; not saved: "
                      "baseline.pt, baseline_best.pt, baseline_loss.png, so those of them in "
                      f"{self.out_dir} are an earlier run's (stale)", err)
        self.assertEqual(leftovers(self.out_dir), [])

    def test_04_writes_its_three_pictures_as_one_set(self):
        self.use_trained_dropout()
        (self.out_dir / "mistakes.png").mkdir()
        status, out, err = run_main(inference, *self.paths())
        self.assertEqual(status, 1, err)
        self.assertIn("not saved: inference.png, confusion_matrix.png, mistakes.png", err)
        self.assertFalse((self.out_dir / "inference.png").exists())
        self.assertFalse((self.out_dir / "confusion_matrix.png").exists())

    def test_temporary_names_do_not_collide_between_hosts_or_containers_with_the_same_pid(self):
        path = self.out_dir / "shared.json"
        with mock.patch.object(os, "getpid", return_value=1):        # PID 1 in two containers
            names = {saving.temporary_name(path) for _ in range(100)}
        self.assertEqual(len(names), 100)
        self.assertTrue(all(saving.TEMPORARY.fullmatch(name.name) for name in names))


class StopWhileSavingTests(TinyDataTestCase):
    """A Ctrl-C, SIGTERM or SIGHUP that lands inside torch.save is a stop, not a disk error."""

    def test_a_stop_inside_torch_save_is_the_documented_stop_and_leaves_the_earlier_set(self):
        self.train_script(baseline)
        before = {p.name: p.read_bytes() for p in self.out_dir.iterdir()}
        for stop, status in ((KeyboardInterrupt(), 130), (cli.Terminated(signal.SIGTERM), 143),
                             (cli.Terminated(signal.SIGHUP), 129)):
            with self.subTest(status=status):
                # The real torch.save, writing to a file whose write() raises the stop: it reports
                # it as a RuntimeError ("unexpected pos") raised while handling the stop.
                with failing_open(stop):
                    code, out, err = run_main(baseline, *self.paths(), "--epochs", 1)
                self.assertEqual(code, status, err)
                self.assertNotIn("error", err)
                self.assertIn("Stopped: not saved: baseline_history.json, baseline.pt, "
                              "baseline_best.pt, baseline_loss.png; those of them in", err)
                self.assertEqual({p.name: p.read_bytes() for p in self.out_dir.iterdir()}, before)

    def test_fail_lets_a_wrapped_stop_go_on(self):
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("a library's own error")
        except RuntimeError:
            with self.assertRaises(KeyboardInterrupt):
                errors.fail("not this")


class ReadBackTests(TinyDataTestCase):
    """What 03 and 04 read back: a checkpoint or a history that would not give numbers is refused
    by 04 and skipped by 03, each with one sentence."""

    def test_missing_checkpoint_says_to_run_03_first(self):
        status, out, err = run_main(inference, *self.paths(), "--checkpoint",
                                    self.tmp / "nothing.pt")
        self.assertEqual(status, 2)
        self.assertIn("python 03_dropout.py", err)

    def test_bad_checkpoints_each_get_one_sentence(self):
        self.train_script(baseline)
        good = torch.load(self.out_dir / "baseline.pt", weights_only=True)
        wrong_shape = dict(good,
                           state_dict={**good["state_dict"],
                                       "layer_input.weight": torch.zeros(100, 784)})
        files = {"empty.pt": b"",
                 "truncated.pt": (self.out_dir / "baseline.pt").read_bytes()[:5000],
                 "text.pt": b"these are my notes, not weights\n"}
        for name, data in files.items():
            (self.tmp / name).write_bytes(data)
        torch.save({"epochs": 3, "lr": 0.003}, self.tmp / "settings.pt")
        torch.save(wrong_shape, self.tmp / "other_shape.pt")
        cases = {"empty.pt": "empty, truncated", "truncated.pt": "empty, truncated",
                 "text.pt": "empty, truncated",
                 "settings.pt": "not a checkpoint of these scripts",
                 "other_shape.pt": "another network"}
        for name, phrase in cases.items():
            with self.subTest(name):
                self.assert_refused(inference, ["--checkpoint", self.tmp / name], phrase)

    def test_a_checkpoint_that_would_not_give_numbers_is_refused_by_04_and_skipped_by_03(self):
        self.train_script(baseline)
        good = torch.load(self.out_dir / "baseline.pt", weights_only=True)
        nan = {**good["state_dict"], "layer_output.bias": torch.full((10,), math.nan)}
        cases = {"weights that are not numbers": dict(good, state_dict=nan),
                 "dropout 1.5": dict(good, dropout=1.5), "dropout True": dict(good, dropout=True),
                 "epoch nan": dict(good, epoch=math.nan), "no weights": dict(good, state_dict={})}
        for case, checkpoint in cases.items():
            with self.subTest(case):
                torch.save(checkpoint, self.tmp / "bad.pt")
                phrase = "not numbers" if case.startswith("weights") else "truncated, broken"
                self.assert_refused(inference, ["--checkpoint", self.tmp / "bad.pt"], phrase,
                                    "bad.pt")
        # finite, but not its answers
        huge = {k: v * 1e38 for k, v in good["state_dict"].items()}
        torch.save(dict(good, state_dict=huge), self.tmp / "huge.pt")
        self.assert_refused(inference, ["--checkpoint", self.tmp / "huge.pt"],
                            "weights that are not numbers")
        # 64 MB of zeros in a checkpoint whose zip is deflated: 64 KB on disk, refused unread.
        torch.save(dict(good, metrics={"pad": torch.zeros(2 ** 24)}), self.tmp / "big.pt")
        with zipfile.ZipFile(self.tmp / "big.pt") as source, \
                zipfile.ZipFile(self.tmp / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as bomb:
            for member in source.infolist():
                bomb.writestr(member.filename, source.read(member))
        self.assertLess((self.tmp / "bomb.pt").stat().st_size, 2 ** 20)
        self.assert_refused(inference, ["--checkpoint", self.tmp / "bomb.pt"], "unpacks to 64 MB")
        torch.save(cases["weights that are not numbers"], self.out_dir / "baseline.pt")
        out = self.train_script(dropout)
        self.assertIn("confidence.png not written: ", out)
        self.assertIn("not numbers", out)
        self.assertFalse((self.out_dir / "confidence.png").exists())
        saving.load_checkpoint(self.out_dir / "dropout.pt", FashionNeuralNetwork,
                               torch.device("cpu"))     # what 03 saved stays

    def test_any_history_contents_skip_the_comparison_with_a_reason(self):
        texts = ['{"not": "a history"}', "[1, 2]", "half a file [", "\xff\xfe", "NaN", "null",
                 '{"validated_on": "test", "train_losses": [], "test_losses": [], "accuracies": '
                 '[], "seconds": []}']
        good = {"validated_on": "test", "train_losses": [0.5], "test_losses": [0.4],
                "accuracies": [0.8],
                "seconds": [1.0]}
        for key, value in (("train_losses", ["a"]), ("test_losses", [math.nan]),
                           ("accuracies", [True]),
                           ("accuracies", [1.5]), ("seconds", [-1]), ("validated_on", ["test"]),
                           ("test_losses", [0.4, 0.3]), ("train_losses", 0.5),
                           ("test_losses", [{"a": 1}])):
            texts.append(json.dumps({**good, key: value}))
        texts += [json.dumps({**good, "test_losses": [1e308]}),
                  json.dumps({**good, "seconds": [10 ** 400]}),
                  "[" * 100000 + "]" * 100000, json.dumps({**good, "train_losses": [0.5] * 300000})]
        for text in texts:
            with self.subTest(text[:80]):
                self.tmp.joinpath("history.json").write_text(text, errors="surrogateescape")
                with self.assertRaises(errors.BadFile):
                    saving.read_history(self.tmp / "history.json")
        os.mkfifo(self.tmp / "fifo.json")              # reading it would wait for a writer forever
        with self.assertRaises(errors.BadFile):
            saving.read_history(self.tmp / "fifo.json")
        self.tmp.joinpath("history.json").write_text(json.dumps(good))
        self.assertEqual(saving.read_history(self.tmp / "history.json")["test_losses"], [0.4])
        self.out_dir.mkdir()
        (self.out_dir / "baseline_history.json").write_text(texts[-1])
        out = self.train_script(dropout)
        self.assertIn("baseline_vs_dropout.png not written: ", out)
        self.assertFalse((self.out_dir / "baseline_vs_dropout.png").exists())
        # one line says why
        self.assertIn("confidence.png not written: baseline.pt is not in", out)
        self.assertFalse((self.out_dir / "confidence.png").exists())


class OutputTests(TinyDataTestCase):
    """Standard output closed, piped or on a full disk, and a folder in an output's way."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        children = ChildRuns()
        cls.addClassCleanup(children.close)
        folder = children.folder / "full"          # 01_data.py with its output going to a full disk
        folder.mkdir()
        cls.full = children.add(ForkedRun("01_data.py", ["--data-dir", folder / "data", "--out-dir",
                                                         folder / "out", "--no-download"],
                                          folder, children.env, stdout="/dev/full"))
        children.start()

    def test_a_closed_stdout_ends_well(self):                     # python 02_baseline.py >&-
        with contextlib.redirect_stdout(None):
            with self.assertRaises(SystemExit) as stop:
                args = [str(a) for a in self.paths()] + ["--epochs", "1"]
                cli.run_script(lambda: baseline.main(args))
        self.assertEqual(stop.exception.code, 0)
        self.assertTrue(is_png(self.out_dir / "baseline_loss.png"))

    def test_a_folder_in_the_way_of_an_output_is_named_with_what_to_do(self):
        (self.out_dir / "baseline.pt").mkdir(parents=True)
        status, out, err = run_main(baseline, *self.paths(), "--epochs", 1)
        self.assertEqual(status, 1, err)
        self.assertIn("not saved: baseline_history.json, baseline.pt, baseline_best.pt", err)
        self.assertIn("Move away the folder of that name", err)
        # found before any file
        self.assertFalse((self.out_dir / "baseline_history.json").exists())

    def test_a_closed_pipe_ends_quietly_with_141(self):           # python 01_data.py | head -1
        class ClosedPipe(io.StringIO):
            def write(self, text):
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        err = io.StringIO()
        with contextlib.redirect_stdout(ClosedPipe()), contextlib.redirect_stderr(err):
            with self.assertRaises(SystemExit) as stop:
                cli.run_script(lambda: data_step.main([str(a) for a in self.paths()]))
        self.assertEqual((stop.exception.code, err.getvalue()), (141, ""))

    def test_a_lost_output_ends_quietly_with_a_status(self):
        status, out, err = self.full.wait()
        self.assertEqual(status, 1, err)
        self.assertNotIn("Traceback", err)
        self.assertIn("the output could not be written (No space left on device)", err)
        self.assertEqual(err.count("\n"), 1, err)


class EarlierInferencePictureTests(TinyDataTestCase):
    def test_04_names_the_one_image_picture_of_an_earlier_run_either_way(self):
        self.use_trained_dropout()
        photo = self.tmp / "photo.png"
        Image.new("L", (40, 40), 0).save(photo)
        status, out, err = run_main(inference, *self.paths())
        self.assertEqual(status, 0, err)
        self.assertNotIn("earlier run's", out)
        status, out, err = run_main(inference, *self.paths(), "--image", photo)
        self.assertEqual(status, 0, err)
        self.assertIn(f"The inference.png in {self.out_dir} is an earlier run's.", out)
        status, out, err = run_main(inference, *self.paths())
        self.assertEqual(status, 0, err)
        self.assertIn(f"The inference_image.png in {self.out_dir} is an earlier run's.", out)


class OutputFolderTests(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)

    def test_a_dangling_link_or_a_loop_is_refused_as_not_a_folder(self):
        (self.tmp / "dangling").symlink_to(self.tmp / "nowhere")
        (self.tmp / "a").symlink_to(self.tmp / "b")
        (self.tmp / "b").symlink_to(self.tmp / "a")
        for name in ("dangling", "a"):
            with self.subTest(name), mock.patch("sys.stderr"), \
                    self.assertRaises(SystemExit):
                with mock.patch("builtins.print") as said:
                    saving.prepare_out_dir(self.tmp / name)
            self.assertIn("is a file or a link, not a folder", said.call_args[0][0])

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
        write_json(self.tmp / "history.json", {"a": 1})
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
            model, checkpoint = saving.load_checkpoint(path, self.network, torch.device("cpu"))
            self.assertEqual(checkpoint["wrapper"], wrapper)
            for k, v in model.state_dict().items():
                self.assertTrue(torch.equal(v, self.weights[k]), k)


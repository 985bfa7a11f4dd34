"""Issue 36 at the lesson's edges: values derived from flags, stopped sweeps and seeds, the lesson's
functions called from a notebook, 04's earlier pictures, mixup's smallest alphas.

    python -m unittest tests.test_edges_lesson
"""
import contextlib
import io
import json
import math
import types
import unittest
from unittest import mock

import torch
from PIL import Image
from torch import nn, optim
from torch.optim.optimizer import register_optimizer_step_pre_hook

import common
from plumbing import datafiles, saving
from test_scripts import TinyDataTestCase, beyond, inference, run_main

# The tiny data set is a subset of Fashion-MNIST's size: the scripts take one where this says so.
_subset = mock.patch.dict("os.environ", {datafiles.SUBSET_VARIABLE: "1"})
setUpModule, tearDownModule = _subset.start, _subset.stop


def quietly(function, *args, **kwargs):
    """function(*args, **kwargs) with its printing kept from the test's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def tiny_loader(n=8, batch_size=4):
    images, labels = torch.randn(n, 1, 28, 28), torch.arange(n) % 10
    return common.make_loader(images, labels, batch_size, shuffle=False)


def train_tiny(trainloader, testloader, epochs=1):
    model = common.FashionNeuralNetwork()
    optimizer = optim.Adam(model.parameters(), lr=0.003)
    return quietly(common.train, model, trainloader, testloader, nn.NLLLoss(), optimizer, epochs,
                   torch.device("cpu"))


# ------------------------------------------------------------- class 10: called from a notebook

class NotebookEdgeTests(unittest.TestCase):
    """The lesson's functions given what a notebook can give them: a clear ValueError, or sense."""

    def test_plot_losses_of_a_run_without_epochs_is_a_value_error_that_says_so(self):
        with self.assertRaisesRegex(ValueError, "no epoch"):
            common.plot_losses({"stopped at once": common.Run()}, "title")

    def test_train_on_an_empty_trainloader_is_a_value_error_naming_it(self):
        with self.assertRaisesRegex(ValueError, "trainloader is empty"):
            train_tiny([], tiny_loader())

    def test_train_on_an_empty_testloader_is_a_value_error_naming_it(self):
        with self.assertRaisesRegex(ValueError, "testloader is empty"):
            train_tiny(tiny_loader(), [])

    def test_overfitting_on_non_finite_losses_is_a_value_error_not_a_verdict(self):
        for bad in (math.nan, math.inf):
            losses = [0.5 - 0.01 * e for e in range(12)]
            losses[7] = bad
            run = common.Run("test", [0.3] * 12, losses, [0.8] * 12, [1.0] * 12)
            with self.subTest(bad), self.assertRaisesRegex(ValueError, "not all finite"):
                common.overfitting(run)

    def test_a_stop_between_two_appends_of_train_counts_only_whole_epochs(self):
        # The clock is read at each epoch's start and for its seconds, the last of the four
        # appends: a Ctrl-C at the second epoch's end lands after its losses, before its seconds.
        calls = []

        def clock():
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return float(len(calls))

        with mock.patch.object(common, "time", types.SimpleNamespace(perf_counter=clock)):
            run = train_tiny(tiny_loader(), tiny_loader(), epochs=3)
        self.assertEqual(run.stopped, "interrupted")
        lengths = {len(x) for x in (run.train_losses, run.test_losses, run.accuracies, run.seconds)}
        self.assertEqual((run.epochs, lengths), (1, {1}))


# ------------------------------------------------- class 2 and 11c: values derived from flags

class DerivedValueTests(TinyDataTestCase):
    """A flag valid alone, refused in one sentence where what it makes is not, before any file."""

    def test_seeds_that_run_past_torchs_last_seed_are_refused_before_any_file(self):
        last = 2 ** 64 - 1
        err = self.assert_refused(beyond, ["--seed", last - 1, "--seeds", 3], "argument --seeds",
                                  f"end at {last + 1}", "use --seeds 2 or fewer")
        self.assertEqual(err.count("error:"), 1)
        self.assertFalse(self.out_dir.exists())
        self.assertEqual(beyond.parse_args(["--seed", str(last - 1), "--seeds", "2"]).seeds, 2)

    def test_mixup_alphas_whose_beta_draws_underflow_or_overflow_are_refused(self):
        refused = (("0.005", "too small"), ("1e-50", "too small"), ("1e39", "too large"))
        for alpha, phrase in refused:
            with self.subTest(alpha):
                self.assert_refused(beyond, ["--mixup", alpha], "argument --mixup", phrase,
                                    "use 0 (off) or a number from 0.01 to 3.4e+38")
        self.assertFalse(self.out_dir.exists())
        for alpha in ("0.01", "3e38"):
            self.assertEqual(beyond.parse_args(["--mixup", alpha]).mixup, float(alpha))

    def test_the_smallest_mixup_alpha_is_where_torchs_beta_draws_stop_underflowing(self):
        def draws(alpha):
            torch.manual_seed(0)
            beta = beyond.Mixup(tiny_loader(), alpha).beta        # the Beta that Mixup draws from
            return beta.sample((200000,)).double()
        at_the_edge = draws(beyond.MIXUP_LOWEST)
        self.assertEqual((at_the_edge == 0.5).sum().item(), 0)     # no 0 / 0 left
        mixing = (torch.minimum(at_the_edge, 1 - at_the_edge) >= 1e-3).double().mean().item()
        self.assertAlmostEqual(mixing, 1 - 1e-3 ** beyond.MIXUP_LOWEST, delta=0.003)   # Beta's
        self.assertGreater((draws(beyond.MIXUP_LOWEST / 2) == 0.5).sum().item(), 50)  # underflows


# ---------------------------------------------------------------- class 11a: 04's earlier picture

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


# ------------------------------------------------------- class 3: a sweep or seeds that stop

def stop_at_step(test, n):
    """A Ctrl-C at the n-th optimizer step from now, where train() meets it (in-process)."""
    steps = []

    def hook(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == n:
            raise KeyboardInterrupt

    test.addCleanup(register_optimizer_step_pre_hook(hook).remove)


def diverge_after_first_epoch(test):
    """Every run's weights NaN after its first epoch, so that its second diverges."""
    real_keep = saving.keep_weights

    def poisoned(weights, model, epoch, *rest):
        weights = real_keep(weights, model, epoch, *rest)
        if epoch == 1:
            with torch.no_grad():
                model.layer_input.weight.fill_(float("nan"))
        return weights

    patch = mock.patch.object(saving, "keep_weights", poisoned)
    patch.start()
    test.addCleanup(patch.stop)


# --val-split 60 leaves 270 training images: 5 steps an epoch at the batch size of 64.
STEPS = 5
SWEEP = ["--epochs", 2, "--val-split", 60, "--sweep-dropout", 0.1, 0.3]


class StoppedSeriesTests(TinyDataTestCase):
    """One rule for a sweep and --seeds: the stopped run told as a single run, left out of the
    table, its completed epochs kept and marked; earlier files named."""

    def test_a_sweep_stopped_in_its_first_run_keeps_its_epochs_and_says_so(self):
        stop_at_step(self, STEPS + 2)                   # run 1, epoch 2
        status, out, err = run_main(beyond, *self.paths(), *SWEEP)
        self.assertEqual(status, 130, err)
        table = json.loads((self.out_dir / "dropout_sweep.json").read_text())
        self.assertEqual((table["runs"], table["chosen"]), ({}, None))
        self.assertEqual((table["stopped"]["dropout"], table["stopped"]["seed"],
                          table["stopped"]["how"], len(table["stopped"]["test_losses"])),
                         (0.1, 0, "interrupted", 1))
        self.assertFalse((self.out_dir / "dropout_sweep.png").exists())
        self.assertIn("The sweep stopped during its run 1 of 2 (dropout 0.1, seed 0), after 1 of "
                      "its 2 epochs: no run finished, so nothing is tabled, and no choice is made. "
                      "Its 1 completed epoch is kept in dropout_sweep.json, marked stopped.", err)
        self.assertIn("Kept the 1 completed epoch;", err)          # as the single run says it

    def test_a_stopped_sweep_names_the_earlier_files_it_did_not_rewrite(self):
        self.out_dir.mkdir()
        for name in ("dropout_sweep.png", "beyond_final.pt"):
            (self.out_dir / name).write_bytes(b"an earlier run's")
        stop_at_step(self, STEPS + 2)
        status, out, err = run_main(beyond, *self.paths(), *SWEEP, "--final-fit")
        self.assertEqual(status, 130, err)
        self.assertIn(f"The dropout_sweep.png in {self.out_dir} is an earlier run's.", out)
        self.assertIn("No final fit: the sweep did not end; the beyond_final.pt in "
                      f"{self.out_dir} is an earlier run's.", err)

    def test_a_diverged_run_of_a_sweep_gets_the_single_runs_sentence(self):
        diverge_after_first_epoch(self)
        status, _, alone = run_main(beyond, *self.paths(), "--epochs", 2, "--val-split", 60,
                                    "--dropout", 0.1, "--out-dir", self.out_dir / "alone")
        self.assertEqual(status, 1, alone)
        sentence, = [line for line in alone.splitlines() if line.startswith("error:")]
        self.assertIn("the training diverged at epoch 2 (a loss above 100 or not a number)",
                      sentence)
        status, out, err = run_main(beyond, *self.paths(), *SWEEP)
        self.assertEqual(status, 1, err)
        self.assertIn(sentence, err.splitlines())

    def test_seeds_leave_a_stopped_run_out_of_the_table_and_mark_it_in_their_file(self):
        stop_at_step(self, 2 * STEPS + STEPS + 2)       # seed 1's run, epoch 2
        status, out, err = run_main(beyond, *self.paths(), "--epochs", 2, "--val-split", 60,
                                    "--seeds", 2)
        self.assertEqual(status, 130, err)
        row = out.split("overfitting")[1].splitlines()[1]
        self.assertRegex(row, r"^\s+0\.2\s+1 ")                     # one seed tabled: seed 0
        table = json.loads((self.out_dir / "beyond_seeds.json").read_text())
        self.assertEqual(({k: v.get("stopped") for k, v in table.items()}),
                         {"0": None, "1": "interrupted"})
        self.assertEqual(len(table["1"]["test_losses"]), 1)
        self.assertIn("The series of seeds stopped during its run 2 of 2 (seed 1), after 1 of "
                      "its 2 epochs: the 1 finished run is tabled, the stopped one left out. Its 1 "
                      "completed epoch is kept in beyond_seeds.json, marked stopped.", err)

    def test_seeds_stopped_in_the_first_epoch_end_in_the_stop_not_a_traceback(self):
        stop_at_step(self, 1)
        status, out, err = run_main(beyond, *self.paths(), "--epochs", 2, "--val-split", 60,
                                    "--seeds", 2)
        self.assertEqual(status, 130, err)
        self.assertNotIn("Traceback", err)
        self.assertIn("after 0 of its 2 epochs: no run finished, so nothing is tabled.", err)

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

import common
from plumbing import datafiles
from test_scripts import TinyDataTestCase, beyond, inference, is_png, run_main

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
        for alpha, phrase in (("0.005", "too small"), ("1e-50", "too small"), ("1e39", "too large")):
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

"""Guards 05_beyond.py: the flags the tutorial does not have, the seeds, and the dropout sweep's
honest choice."""
import argparse
import contextlib
import io
import json
import math
import re
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import TensorDataset

import common
from common import FashionNeuralNetwork
from plumbing import saving
from tests.tiny import (N_TEST, N_TRAIN, TinyDataTestCase, baseline, beyond, dropout, is_png,
                        run_main, tiny_loader)


class BeyondTheTutorialTests(TinyDataTestCase):
    """05_beyond.py: the flags the tutorial does not have, and the honest choice they serve."""

    def spy_on_training(self):
        """Record (trainloader, valloader, loss_function, optimizer, epochs) of each common.train
        call, and each common.evaluate call's images, in the order they happen."""
        calls = []
        real_train, real_evaluate = common.train, common.evaluate

        def spy_train(model, trainloader, valloader, loss_function, optimizer, epochs, *a, **k):
            run = real_train(model, trainloader, valloader, loss_function, optimizer, epochs,
                             *a, **k)
            calls.append(("train", trainloader, valloader, loss_function, optimizer, epochs, run))
            return run

        def spy_evaluate(model, images, *args):
            calls.append(("evaluate", images))
            return real_evaluate(model, images, *args)

        for name, spy in (("train", spy_train), ("evaluate", spy_evaluate)):
            patch = mock.patch.object(common, name, spy)
            patch.start()
            self.addCleanup(patch.stop)
        return calls

    def test_02_and_03_have_only_the_tutorials_knobs_and_05_the_rest(self):
        def flags(module):
            status, out, err = run_main(module, "--help")
            self.assertEqual(status, 0, err)
            return set(re.findall(r"^  (--[a-z-]+)", out, re.M))
        knobs = {"--data-dir", "--out-dir", "--no-download", "--epochs", "--batch-size",
                 "--lr", "--seed", "--device"}
        self.assertEqual(flags(baseline), knobs)
        self.assertEqual(flags(dropout), knobs | {"--dropout"})
        self.assertEqual(flags(beyond), knobs | {"--dropout", "--val-split", "--final-fit",
                                                 "--schedule", "--augment", "--mixup",
                                                 "--weight-decay", "--sweep-dropout", "--seeds",
                                                 "--train-size", "--dropout-per-layer",
                                                 "--no-eval", "--look-inside"})

    def test_val_split_is_disjoint_and_the_same_for_the_same_seed(self):
        trainloader, _ = self.load()
        images = trainloader.dataset[:][0]
        key = lambda t: {tuple(x.flatten().tolist()[:200]) for x in t}
        splits = [beyond.hold_out(trainloader, argparse.Namespace(val_split=50, batch_size=64),
                                  seed)
                  for seed in (3, 3, 4)]
        (train_a, val_a), (train_b, val_b), (_, val_c) = splits
        self.assertEqual((len(train_a.dataset), len(val_a.dataset)), (N_TRAIN - 50, 50))
        self.assertFalse(key(train_a.dataset[:][0]) & key(val_a.dataset[:][0]))
        self.assertEqual(key(train_a.dataset[:][0]) | key(val_a.dataset[:][0]),
                         key(images))
        self.assertTrue(torch.equal(val_a.dataset[:][0], val_b.dataset[:][0]))
        self.assertFalse(torch.equal(val_a.dataset[:][0], val_c.dataset[:][0]))

    def test_with_a_val_split_the_test_set_is_evaluated_once(self):
        _, testloader = self.load()
        calls = self.spy_on_training()
        out = self.train_script(beyond, "--epochs", 3, "--val-split", 60)
        (_, trainloader, valloader, *_), (_, once) = calls
        self.assertEqual((len(trainloader.dataset), len(valloader.dataset)), (N_TRAIN - 60, 60))
        self.assertTrue(torch.equal(once, testloader.dataset[:][0]))
        self.assertIn("Validation Loss", out)
        history = json.loads((self.out_dir / "beyond_history.json").read_text())
        self.assertEqual(history["validated_on"], "validation")
        self.assertTrue(is_png(self.out_dir / "beyond_loss.png"))
        _, checkpoint = saving.load_checkpoint(self.out_dir / "beyond_best.pt",
                                               FashionNeuralNetwork, torch.device("cpu"))
        self.assertIn("test_accuracy", checkpoint["metrics"])
        self.assertFalse((self.out_dir / "dropout.pt").exists())        # 03's files are its own

    def test_cosine_schedule_ends_at_zero_learning_rate(self):
        calls = self.spy_on_training()
        self.train_script(beyond, "--epochs", 2, "--schedule", "cosine")
        (_, _, _, _, optimizer, *_), = calls
        self.assertLess(optimizer.param_groups[0]["lr"], 1e-9)

    def test_augmentation_shifts_and_mirrors_whole_batches_and_keeps_labels(self):
        images = torch.rand(8, 1, 28, 28) * 2 - 1
        labels = torch.arange(8)
        loader = beyond.Augmented(common.make_loader(TensorDataset(images, labels), 8, shuffle=False), shift=2,
                                  flip=True)
        torch.manual_seed(0)
        (augmented, same_labels), = list(loader)
        self.assertTrue(torch.equal(same_labels, labels))
        for image, result in zip(images, augmented):
            candidates = [F.pad(source, (2, 2, 2, 2), value=-1.0)[:, dy:dy + 28, dx:dx + 28]
                          for source in (image, image.flip(-1))
                          for dy in range(5) for dx in range(5)]
            self.assertTrue(any(torch.equal(result, c) for c in candidates))
        self.assertFalse(torch.equal(augmented, images))

    def test_mixup_mixes_pairs_of_images_and_their_labels_alike(self):
        images = torch.rand(16, 1, 28, 28) * 2 - 1
        # distinct within each batch of 8
        labels = torch.arange(16) % 10
        one_hot = F.one_hot(labels, 10).float()
        loader = beyond.Mixup(common.make_loader(TensorDataset(images, labels), 8, shuffle=False), alpha=0.2)
        torch.manual_seed(0)
        lams = []
        for (mixed, targets), start in zip(loader, (0, 8)):
            batch = range(start, start + 8)
            # each image's own share
            lam = targets[torch.arange(8), labels[start:start + 8]].min().item()
            lams.append(lam)
            self.assertTrue(torch.allclose(targets.sum(1), torch.ones(8)))
            for i, own in enumerate(batch):
                # lam of its own image and label, 1 - lam of another's (or of itself, drawn as its
                # own pair)
                pairs = [(lam * images[own] + (1 - lam) * images[j],
                          lam * one_hot[own] + (1 - lam) * one_hot[j])
                         for j in batch]
                self.assertTrue(any(torch.allclose(mixed[i], image, atol=1e-6) and
                                    torch.allclose(targets[i], target,
                                                   atol=1e-6) for image, target in pairs))
        # drawn per batch
        self.assertTrue(all(0 < lam < 1 for lam in lams) and lams[0] != lams[1], lams)

    def test_mixup_trains_with_a_loss_that_takes_probabilities_and_is_nllloss_on_labels(self):
        calls = self.spy_on_training()
        self.train_script(beyond, "--epochs", 1, "--mixup", 0)
        self.train_script(beyond, "--epochs", 2, "--mixup", 0.2, "--dropout", 0)
        (_, off_loader, _, off_loss, *_), (_, trainloader, valloader, loss_function, *_) = calls
        # --mixup 0 is off: the tutorial's loss
        self.assertNotIsInstance(off_loader, beyond.Mixup)
        self.assertIsInstance(off_loss, nn.NLLLoss)
        self.assertIsInstance(trainloader, beyond.Mixup)
        # validated on plain images and labels
        self.assertEqual(next(iter(valloader))[1].dim(), 1)
        log_ps = F.log_softmax(torch.randn(6, 10), dim=1)
        a, b = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([9, 8, 7, 6, 5, 4])
        self.assertAlmostEqual(loss_function(log_ps, a).item(), F.nll_loss(log_ps, a).item(),
                               places=5)
        mixed = 0.3 * F.one_hot(a, 10).float() + 0.7 * F.one_hot(b, 10).float()
        self.assertAlmostEqual(loss_function(log_ps, mixed).item(),
                               0.3 * F.nll_loss(log_ps, a).item()
                               + 0.7 * F.nll_loss(log_ps, b).item(), places=5)
        self.assert_refused(beyond, ["--mixup", "-0.2"], "--mixup", "at least 0")
        self.assert_refused(beyond, ["--mixup", "1e-50"], "--mixup", "0 (off)", "from 0.01")

    def test_weight_decay_is_adamw_and_without_it_the_tutorials_adam(self):
        calls = self.spy_on_training()
        self.train_script(beyond, "--weight-decay", 0.05)
        self.train_script(beyond)
        optimizers = [(type(c[4]), c[4].param_groups[0]["weight_decay"]) for c in calls]
        self.assertEqual(optimizers, [(optim.AdamW, 0.05), (optim.Adam, 0)])

    def test_final_fit_trains_on_all_images_and_tests_once(self):
        self.assert_refused(beyond, ["--final-fit"], "--final-fit", "--val-split")
        calls = self.spy_on_training()
        out = self.train_script(beyond, "--epochs", 3, "--val-split", 60, "--final-fit",
                                "--schedule", "cosine",
                                "--weight-decay", 0.05)
        best = json.loads((self.out_dir / "beyond_history.json").read_text())["test_losses"]
        chosen = 1 + best.index(min(best))
        self.assertEqual([(c[0], len(c[1].dataset), c[5]) if c[0] == "train" else (c[0], len(c[1]))
                          for c in calls], [("train", N_TRAIN - 60, 3), ("train", N_TRAIN, chosen),
                                            ("evaluate", N_TEST)])
        self.assertIn(f"Test set, once, with the final fit's {chosen} epochs", out)
        model, checkpoint = saving.load_checkpoint(self.out_dir / "beyond_final.pt",
                                                   FashionNeuralNetwork, torch.device("cpu"))
        _, accuracy = common.evaluate(model, *self.load()[1].dataset.tensors, torch.device("cpu"))
        # its own weights
        self.assertAlmostEqual(accuracy, checkpoint["metrics"]["test_accuracy"], places=6)
        _, best = saving.load_checkpoint(self.out_dir / "beyond_best.pt", FashionNeuralNetwork,
                                         torch.device("cpu"))
        self.assertNotIn("test_accuracy", best["metrics"])

    def test_dropout_sweep_prints_its_runs_chooses_by_validation_then_tests_once(self):
        self.assert_refused(beyond, ["--sweep-dropout", "0", "0.5"], "--sweep-dropout",
                            "--val-split")
        calls = self.spy_on_training()
        out = self.train_script(beyond, "--epochs", 3, "--lr", 0.02, "--val-split", 60,
                                "--sweep-dropout", 0, 0.5, "--final-fit")
        sweep = json.loads((self.out_dir / "dropout_sweep.json").read_text())
        self.assertTrue(is_png(self.out_dir / "dropout_sweep.png"))
        trainings = [c for c in calls if c[0] == "train"]
        self.assertEqual([len(c[1].dataset) for c in trainings], [N_TRAIN - 60] * 2 + [N_TRAIN])
        # The table's rows are the runs' histories, each as train() returned it.
        for (p, histories), (*_, run) in zip(sweep["runs"].items(), trainings):
            self.assertEqual(list(histories), ["0"])                        # one seed: --seed 0
            self.assertEqual(histories["0"]["test_losses"], run.test_losses)
            best = run.best_epoch
            # 3 epochs: too few to judge
            row = (f"{float(p):>7} {1:>5} {run.test_losses[best - 1]:>15.4f} {best:>15} "
                   f"{run.test_losses[-1]:>15.4f} "
                   f"{run.test_losses[-1] - run.train_losses[-1]:>+15.3f} "
                   f"{run.accuracies[best - 1]:>15.3f} {'too early':>11}")
            self.assertIn(row, out)
        lowest = {float(p): min(h["0"]["test_losses"]) for p, h in sweep["runs"].items()}
        chosen = min(lowest, key=lowest.get)
        epochs = 1 + sweep["runs"][str(chosen)]["0"]["test_losses"].index(lowest[chosen])
        self.assertEqual((sweep["chosen"]["dropout"], sweep["chosen"]["epochs"]),
                         (chosen, {"0": epochs}))
        self.assertIn(f"Chosen: dropout {chosen}. It has the lowest validation loss, on one seed",
                      out)
        # The test set only once, after the choice, on the final fit of that choice.
        self.assertEqual([c[0] for c in calls], ["train", "train", "train", "evaluate"])
        self.assertEqual(trainings[-1][5], epochs)
        _, checkpoint = saving.load_checkpoint(self.out_dir / "beyond_final.pt",
                                               FashionNeuralNetwork, torch.device("cpu"))
        self.assertEqual((checkpoint["dropout"], checkpoint["epoch"]), (chosen, epochs))

    def test_same_sweep_same_table_and_an_interrupted_sweep_keeps_its_finished_runs(self):
        args = ["--epochs", 2, "--val-split", 60, "--sweep-dropout", 0.1, 0.3]
        tables = [self.train_script(beyond, *args, "--out-dir",
                                    self.out_dir / str(n)).split("\n\ndropout")[1]
                  for n in range(2)]
        self.assertEqual(tables[0].split("Wrote")[0], tables[1].split("Wrote")[0])
        real_train, seen = common.train, []

        def interrupted_second(*a, **k):        # Ctrl-C during the second run's second epoch
            seen.append(1)
            run = real_train(*a, **{**k}) if len(seen) == 1 else real_train(*a[:5], 1, *a[6:], **k)
            if len(seen) == 2:
                run.stopped = "interrupted"
            return run

        with mock.patch.object(common, "train", interrupted_second):        # a third value not run
            status, out, err = run_main(beyond, *self.paths(), *args, 0.5)
        self.assertEqual(status, 130, err)
        sweep = json.loads((self.out_dir / "dropout_sweep.json").read_text())
        # the stopped run left out
        self.assertEqual(list(sweep["runs"]), ["0.1"])
        self.assertIsNone(sweep["chosen"])
        self.assertTrue(is_png(self.out_dir / "dropout_sweep.png"))
        self.assertIn("The sweep stopped during its run 2 of 3 (dropout 0.3, seed 0), after 1 of "
                      "its 2 epochs: the 1 finished run is drawn and tabled, the stopped one left "
                      "out, and no choice is made.", err)


class SeedsTests(TinyDataTestCase):
    """05_beyond.py --seeds N: every setting on N seeds, each figure as mean ± standard
    deviation."""

    def runs_with(self, lowest_losses, epochs=12):
        """Constructed runs, one per seed, whose validation loss bottoms out at the given values."""
        runs = {}
        for seed, low in enumerate(lowest_losses):
            losses = [low + 0.1] * epochs
            losses[seed + 2] = low                                   # lowest at epoch seed + 3
            runs[seed] = common.Run("validation", [0.2] * epochs, losses, [0.8] * epochs,
                                    [1.0] * epochs)
        return runs

    def test_mean_and_standard_deviation_and_the_printed_table(self):
        self.assertEqual(beyond.mean_sd([1.0, 2.0, 3.0]), (2.0, 1.0))
        self.assertEqual(beyond.mean_sd([0.5]), (0.5, 0.0))
        mean, sd = beyond.mean_sd([0.30, 0.32, 0.34, 0.36])
        self.assertAlmostEqual(mean, 0.33)
        squares = sum((x - 0.33) ** 2 for x in (0.30, 0.32, 0.34, 0.36))
        self.assertAlmostEqual(sd, math.sqrt(squares / 3))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            beyond.print_spread({0.2: self.runs_with([0.30, 0.32, 0.34])}, "dropout")
        row = out.getvalue().splitlines()[2]
        self.assertIn("0.3200 ± 0.0200", row)                           # lowest validation loss
        self.assertIn("4.0 ± 1.0", row)                                 # its epoch: 3, 4 and 5
        self.assertIn("0 of 3", row)                                    # flat after: no overfitting

    def test_a_near_tie_is_said_and_settled_for_the_simplest_and_a_clear_winner_is_taken(self):
        near = {0.0: self.runs_with([0.350, 0.360, 0.340]),
                0.1: self.runs_with([0.349, 0.357, 0.341]),
                0.5: self.runs_with([0.45, 0.46, 0.44])}
        chosen, why = beyond.choose(near)
        self.assertEqual(chosen, 0.0)                                   # 0.1's lower mean is noise
        self.assertIn("Dropout 0.1 has the lowest mean validation loss, but dropout 0.0 is closer",
                      why)
        self.assertIn("cannot tell them apart", why)
        clear = {0.0: self.runs_with([0.400, 0.405, 0.395]),
                 0.2: self.runs_with([0.350, 0.352, 0.348])}
        chosen, why = beyond.choose(clear)
        self.assertEqual(chosen, 0.2)
        self.assertIn("a difference the seeds agree on", why)
        # The seeds scatter by 0.03 (the means' standard errors overlap), but on every seed 0.2 is
        # 0.008 to 0.012 above 0.0: compared seed by seed, as the sweep's runs are, that is clear.
        paired = {0.0: self.runs_with([0.33, 0.36, 0.39]),
                  0.2: self.runs_with([0.340, 0.372, 0.398])}
        chosen, why = beyond.choose(paired)
        self.assertEqual(chosen, 0.0)
        self.assertIn("0.0100 below the next (dropout 0.2)", why)
        three = {**near, 0.2: self.runs_with([0.351, 0.358, 0.341])}
        self.assertIn("but dropout 0.0 and dropout 0.2 are closer", beyond.choose(three)[1])
        chosen, why = beyond.choose({p: {0: rs[0]} for p, rs in near.items()})      # one seed
        self.assertEqual(chosen, 0.1)
        self.assertIn("on one seed", why)

    def history(self, path, seed=None):
        data = json.loads(Path(path).read_text())
        history = data[str(seed)] if seed is not None else data
        return {k: v for k, v in history.items() if k not in ("seconds", "test_accuracy")}

    def test_each_seed_of_a_repeat_is_that_seed_run_alone(self):
        common_args = ["--val-split", 60, "--epochs", 2, "--dropout", 0.2, "--mixup", 0.2]
        out = self.train_script(beyond, *common_args, "--seed", 3, "--seeds", 2,
                                "--out-dir", self.out_dir / "repeat")
        # where it is, and the time left
        self.assertIn("Run 2 of 2, seed 4: about", out)
        self.assertIn("(mean ± standard deviation over the seeds", out)
        self.assertRegex(out,
                         r"Test accuracy, once per seed: \d\.\d{4}, \d\.\d{4}: \d\.\d{4} ± "
                         r"\d\.\d{4}")
        for seed in (3, 4):
            self.train_script(beyond, *common_args, "--seed", seed, "--out-dir",
                              self.out_dir / str(seed))
            self.assertEqual(self.history(self.out_dir / "repeat" / "beyond_seeds.json", seed),
                             self.history(self.out_dir / str(seed) / "beyond_history.json"))
        # The repeat's own files are its first seed's, as that seed alone writes them.
        self.assertEqual(self.history(self.out_dir / "repeat" / "beyond_history.json"),
                         self.history(self.out_dir / "3" / "beyond_history.json"))
        # In a sweep too: each value's run of each seed is the sweep of that value and seed alone.
        sweep_args = ["--val-split", 60, "--epochs", 2, "--sweep-dropout"]
        self.train_script(beyond, *sweep_args, 0, 0.5, "--seeds", 2, "--out-dir",
                          self.out_dir / "sweep")
        self.assertTrue(is_png(self.out_dir / "sweep" / "dropout_sweep.png"))
        both = json.loads((self.out_dir / "sweep" / "dropout_sweep.json").read_text())
        self.train_script(beyond, *sweep_args, 0.5, "--seed", 1, "--out-dir",
                          self.out_dir / "alone")
        alone = json.loads((self.out_dir / "alone" / "dropout_sweep.json").read_text())
        for run in (both["runs"]["0.5"]["1"], alone["runs"]["0.5"]["1"]):
            del run["seconds"]
        self.assertEqual(both["runs"]["0.5"]["1"], alone["runs"]["0.5"]["1"])

    def test_the_sweep_picture_shows_the_spread(self):
        runs = {0.0: self.runs_with([0.35, 0.36, 0.34]), 0.2: self.runs_with([0.36, 0.37, 0.35])}
        fig = beyond.plot_sweep(runs, 0.0)
        curves, summary = fig.axes[:2]
        self.assertEqual(len(curves.collections), 2)                    # a band around each curve
        self.assertTrue(any(type(c).__name__ == "ErrorbarContainer" for c in summary.containers))


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

"""The lesson as a learner meets it, on a tiny Fashion-MNIST that the tests write themselves: the
four scripts and the files they write, the network, the loop's counts, dropout in train and eval
mode, the best checkpoint, the verdict, and what 04_inference.py draws.

    python -m unittest                  # the whole suite: this file, then tests/ by concern
    python -m unittest test_scripts     # the lesson alone

The shared helpers are in tests/tiny.py; docs/testing.md says which module guards what.
"""
import contextlib
import copy
import io
import json
import math
import os
import re
import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn, optim
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import SequentialSampler, TensorDataset
from torchvision import datasets, transforms

import common
from common import FashionNeuralNetwork
from plumbing import saving
from tests.tiny import (CPU, N_TEST, N_TRAIN, TinyDataTestCase, baseline, data_step, dropout,
                        inference, is_png, keep_figures, normalised_by_hand, prepared_photo,
                        run_main, watch_networks, write_mislabelled_copy)


# ----------------------------------------------------------------------------- the four scripts

class ScriptTests(TinyDataTestCase):
    """Each script runs on the tiny data set and writes its files, which read back."""

    def test_01_data_writes_samples_png_and_prints_the_facts(self):
        status, out, err = run_main(data_step, *self.paths())
        self.assertEqual(status, 0, err)
        self.assertTrue(is_png(self.out_dir / "samples.png"))
        self.assertIn(f"Training images: {N_TRAIN}, test images: {N_TEST}", out)
        self.assertIn("torch.Size([64, 1, 28, 28])", out)
        self.assertIn("equals the scripts' tensors: True", out)

    def test_02_baseline_writes_history_plot_and_checkpoints_that_rebuild_the_network(self):
        out = self.train_script(baseline)
        self.assertIn("torch.Size([64, 10])", out)
        self.assertRegex(out,
                         r"Epoch: 1/1\.\.  Training Loss: \d\.\d{3}\.\.  Test Loss: \d\.\d{3}\.\.  "
                              r"Test Accuracy: \d\.\d{3}")
        history = json.loads((self.out_dir / "baseline_history.json").read_text())
        self.assertEqual(history["validated_on"], "test")
        for key in ("train_losses", "test_losses", "accuracies", "seconds"):
            self.assertEqual(len(history[key]), 1, key)
        self.assertTrue(is_png(self.out_dir / "baseline_loss.png"))
        _, testloader = self.load()
        test_set = testloader.dataset.tensors
        for name in ("baseline.pt", "baseline_best.pt"):
            model, checkpoint = saving.load_checkpoint(self.out_dir / name, FashionNeuralNetwork,
                                                       torch.device("cpu"))
            self.assertFalse(model.training)
            self.assertEqual(checkpoint["classes"], list(common.CLASSES))
            # The rebuilt network is the trained one: it measures exactly what was recorded.
            loss, accuracy = common.evaluate(model, *test_set, torch.device("cpu"))
            self.assertAlmostEqual(loss, checkpoint["metrics"]["test_loss"], places=5)
            self.assertAlmostEqual(accuracy, checkpoint["metrics"]["test_accuracy"], places=6)

    def test_same_seed_same_history(self):
        histories = []
        for run in range(2):
            self.train_script(baseline, "--epochs", 2, "--out-dir", self.out_dir / str(run))
            history = json.loads((self.out_dir / str(run) / "baseline_history.json").read_text())
            del history["seconds"]
            histories.append(history)
        self.assertEqual(histories[0], histories[1])
        self.train_script(baseline, "--epochs", 2, "--seed", 1, "--out-dir", self.out_dir / "other")
        other = json.loads((self.out_dir / "other" / "baseline_history.json").read_text())
        self.assertNotEqual(other["train_losses"][0], histories[0]["train_losses"][0])

    def test_03_dropout_compares_with_the_baseline(self):
        self.train_script(baseline)
        out = self.train_script(dropout)
        for name in ("dropout_loss.png", "baseline_vs_dropout.png", "confidence.png"):
            self.assertTrue(is_png(self.out_dir / name), name)
        self.assertRegex(out, r"without dropout \(epoch 1\) +\d\.\d{3} +\d\.\d{3} +\d\.\d{3}")
        model, checkpoint = saving.load_checkpoint(self.out_dir / "dropout.pt",
                                                   FashionNeuralNetwork, torch.device("cpu"))
        self.assertEqual(checkpoint["dropout"], 0.2)
        self.assertEqual(model.dropout.p, 0.2)
        self.assertIn("Without dropout:", out)
        self.assertIn("Dropout 0.2:", out)

    def test_04_inference_writes_its_three_pictures_of_the_test_set(self):
        self.use_trained_dropout()
        status, out, err = run_main(inference, *self.paths())
        self.assertEqual(status, 0, err)
        for name in ("inference.png", "confusion_matrix.png", "mistakes.png"):
            self.assertTrue(is_png(self.out_dir / name), name)
        self.assertRegex(out, rf"Test accuracy: [\d.]+ \(\d+ of {N_TEST} images\)")


# ----------------------------------------------------------------------------- step 1: the data

class DataStepTests(TinyDataTestCase):
    """The tensors the scripts train on are the tutorial's, in batches of 64."""

    def test_loaded_tensors_equal_the_tutorials_transform(self):
        trainloader, testloader = self.load()
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.5,), (0.5,))])
        for loader, train in ((trainloader, True), (testloader, False)):
            tutorial = datasets.FashionMNIST(self.data_dir, train=train, transform=transform)
            expected = torch.stack([tutorial[i][0] for i in range(len(tutorial))])
            images, labels = loader.dataset.tensors
            self.assertEqual(images.shape, (len(tutorial), 1, 28, 28))
            self.assertTrue(torch.equal(images, expected))
            self.assertTrue(torch.equal(labels, tutorial.targets))

    def test_values_span_minus_one_to_one(self):
        trainloader, _ = self.load()
        images = trainloader.dataset.tensors[0]
        self.assertEqual((images.min().item(), images.max().item()), (-1.0, 1.0))

    def test_a_batch_holds_64_images(self):
        trainloader, testloader = self.load()
        images, labels = next(iter(trainloader))
        self.assertEqual(images.shape, torch.Size([64, 1, 28, 28]))
        self.assertEqual(labels.shape, torch.Size([64]))
        # the test set is not shuffled
        self.assertIsInstance(testloader.sampler.sampler, SequentialSampler)

    def test_the_seed_sets_the_order_as_in_dataloader_and_the_test_set_is_in_order(self):
        # Each image once an epoch, in a new order each epoch: LessonScriptTests, as 02 runs it.
        ids = torch.arange(N_TRAIN)

        def first_epoch(loader, seed):
            torch.manual_seed(seed)
            return [batch for batch, _ in loader]

        trainloader = common.make_loader(TensorDataset(ids, ids), 64, shuffle=True)
        first = first_epoch(trainloader, 0)
        self.assertTrue(all(map(torch.equal, first_epoch(trainloader, 0), first)))  # the same seed
        self.assertFalse(torch.equal(torch.cat(first_epoch(trainloader, 1)), torch.cat(first)))
        # The same batches, in the same order, as DataLoader(dataset, batch_size=64, shuffle=True)
        reference = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, ids),
                                                batch_size=64, shuffle=True)
        self.assertTrue(all(map(torch.equal, first_epoch(reference, 0), first)))
        testloader = common.make_loader(TensorDataset(ids, ids), 64, shuffle=False)
        self.assertTrue(torch.equal(torch.cat(first_epoch(testloader, 0)), ids))


# ---------------------------------------------------------- steps 2 and 3: the network and the loop

class LessonLoopTests(unittest.TestCase):
    """The network and the loop of steps 2 and 3, each against a reference written out here."""

    def test_the_network_is_784_256_128_64_10_with_relu_and_dropout_after_each_hidden_layer(self):
        torch.manual_seed(0)
        x = torch.rand(16, 1, 28, 28) * 2 - 1
        for p in (0.0, 0.3):
            model = FashionNeuralNetwork(dropout=p)
            layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
            self.assertEqual([tuple(layer.weight.shape) for layer in layers],
                             [(256, 784), (128, 256), (64, 128), (10, 64)])

            def reference(x, training):
                h = x.view(len(x), 784)
                for layer in layers[:-1]:
                    h = F.dropout(F.relu(F.linear(h, layer.weight, layer.bias)), p, training)
                return F.log_softmax(F.linear(h, layers[-1].weight, layers[-1].bias), dim=1)

            for training in (True, False):       # the same seed draws the same dropout masks
                with self.subTest(p=p, training=training):
                    model.train(training)
                    torch.manual_seed(1)
                    output = model(x)
                    torch.manual_seed(1)
                    torch.testing.assert_close(output, reference(x, training), rtol=0, atol=1e-6)
                    self.assertEqual(output.shape, (16, 10))            # log-probabilities
                    torch.testing.assert_close(output.exp().sum(dim=1), torch.ones(16))

    def test_a_dropout_network_trains_in_train_mode_and_validates_in_eval_mode_every_epoch(self):
        torch.manual_seed(0)
        model = FashionNeuralNetwork(dropout=0.5)
        trainloader = common.make_loader(TensorDataset(torch.rand(40, 1, 28, 28),
                                                       torch.randint(0, 10, (40,))),
                                         8, shuffle=True)                  # 5 batches of 8
        testloader = common.make_loader(TensorDataset(torch.rand(15, 1, 28, 28),
                                                      torch.randint(0, 10, (15,))),
                                        5, shuffle=False)                  # 3 batches of 5
        passes = []             # each: [step, train mode, gradients on, dropout zeroed something]

        def before(module, inputs):
            step = {8: "train", 5: "validate"}[len(inputs[0])]
            passes.append([step, module.training, torch.is_grad_enabled(), False])

        def after_dropout(module, inputs, output):
            passes[-1][3] |= not torch.equal(output, inputs[0])

        model.register_forward_pre_hook(before)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.register_forward_hook(after_dropout)
        with contextlib.redirect_stdout(io.StringIO()):
            run = common.train(model, trainloader, testloader, nn.NLLLoss(),
                               optim.Adam(model.parameters(), lr=0.001), 3, CPU)
        self.assertEqual(run.epochs, 3)
        epoch = [["train", True, True, True]] * 5 + [["validate", False, False, False]] * 3
        self.assertEqual(passes, epoch * 3)

    def test_each_batch_is_one_step_down_its_own_gradient_then_the_epoch_is_validated(self):
        torch.manual_seed(0)
        images, labels = torch.rand(20, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (20,))
        loader = common.make_loader(TensorDataset(images, labels), 8, shuffle=False)     # batches of 8, 8 and 4
        model, by_hand = FashionNeuralNetwork(), FashionNeuralNetwork()
        by_hand.load_state_dict(model.state_dict())
        with contextlib.redirect_stdout(io.StringIO()):
            run = common.train(model, loader, loader, nn.NLLLoss(),
                               optim.SGD(model.parameters(), lr=0.1), 2, CPU)
        params = list(by_hand.parameters())
        for epoch in range(2):          # plain gradient descent, written out batch by batch
            total = 0.0
            for start in (0, 8, 16):
                x, y = images[start:start + 8], labels[start:start + 8]
                loss = F.nll_loss(by_hand(x), y)
                total += loss.item() * len(y)
                with torch.no_grad():
                    for p, gradient in zip(params, torch.autograd.grad(loss, params)):
                        p -= 0.1 * gradient
            self.assertAlmostEqual(run.train_losses[epoch], total / 20, places=5)
            with torch.no_grad():
                validation_loss = F.nll_loss(by_hand(images), labels).item()
            self.assertAlmostEqual(run.test_losses[epoch], validation_loss, places=5)
        for name, value in by_hand.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], value, msg=name)

    def test_loss_and_accuracy_are_counted_per_image(self):
        torch.manual_seed(0)
        images, labels = torch.rand(70, 1, 28, 28), torch.randint(0, 10, (70,))
        # batches of 64 and 6
        loader = common.make_loader(TensorDataset(images, labels), batch_size=64,
                                    shuffle=False)
        model = common.FashionNeuralNetwork()
        with torch.no_grad():
            log_ps = model(images)
        hand_loss = F.nll_loss(log_ps, labels, reduction="sum").item() / 70
        hand_accuracy = (log_ps.argmax(dim=1) == labels).sum().item() / 70
        loss, accuracy = common.evaluate(model, images, labels, torch.device("cpu"))
        self.assertAlmostEqual(loss, hand_loss, places=5)
        self.assertAlmostEqual(accuracy, hand_accuracy, places=6)
        # The tutorial's mean of batch means weighs the 6 images of the last batch like 64:
        mean_of_means = (F.nll_loss(log_ps[:64], labels[:64]).item()
                         + F.nll_loss(log_ps[64:], labels[64:]).item()) / 2
        self.assertNotAlmostEqual(loss, mean_of_means, places=3)
        # The loop counts the same way: with lr=0 the weights stay, so both of its losses are the
        # hand count.
        with contextlib.redirect_stdout(io.StringIO()):
            run = common.train(model, loader, loader, nn.NLLLoss(),
                               optim.SGD(model.parameters(), lr=0.0),
                               1, torch.device("cpu"))
        self.assertAlmostEqual(run.train_losses[0], hand_loss, places=5)
        self.assertAlmostEqual(run.test_losses[0], hand_loss, places=5)
        self.assertEqual(run.accuracies[0], hand_accuracy)

    def test_evaluate_measures_the_whole_network_in_whatever_mode_it_was_left(self):
        torch.manual_seed(0)
        images, labels = torch.rand(50, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (50,))
        model, whole = FashionNeuralNetwork(dropout=0.5), FashionNeuralNetwork()
        whole.load_state_dict(model.state_dict())
        with torch.no_grad():
            log_ps = whole(images)
        model.train()                   # as train() leaves it, before 05's test_once()
        loss, accuracy = common.evaluate(model, images, labels, CPU)
        self.assertAlmostEqual(loss, F.nll_loss(log_ps, labels).item(), places=6)
        right = (log_ps.argmax(dim=1) == labels).float().mean().item()
        self.assertAlmostEqual(accuracy, right, places=6)

    def test_the_loss_plot_draws_both_losses_per_epoch_and_marks_the_lowest_validation_loss(self):
        runs = {"without dropout": common.Run("test", [1.0, 0.8, 0.7, 0.6], [0.9, 0.6, 0.65, 0.7],
                                              [0.5] * 4, [1.0] * 4),
                "dropout 0.2": common.Run("test", [1.1, 0.9, 0.8, 0.75], [0.8, 0.7, 0.66, 0.64],
                                          [0.5] * 4, [1.0] * 4)}
        for drawn in ({"without dropout": runs["without dropout"]}, runs):
            lines = [(list(line.get_xdata()), list(line.get_ydata()))
                     for line in common.plot_losses(drawn, "title").axes[0].get_lines()]
            expected = []
            for run, best in zip(drawn.values(), (2, 4)):
                expected += [([1, 2, 3, 4], run.train_losses), ([1, 2, 3, 4], run.test_losses),
                             ([best], [run.test_losses[best - 1]])]
            self.assertEqual(sorted(lines), sorted(expected))


class LessonScriptTests(TinyDataTestCase):
    """Steps 2 and 3 as the scripts run them: the batches, the knobs, the checkpoints, the
    printed accuracy."""

    def setUp(self):
        super().setUp()
        keep_figures(self)

    def test_the_best_checkpoint_holds_the_weights_of_the_epoch_of_lowest_validation_loss(self):
        # A tenth of the test labels one class off: the validation loss falls while the network
        # learns, then climbs as it grows sure of the answers those labels call wrong. So the
        # best epoch lies between the first and the last (measured: the 2nd of 5, its loss 0.27
        # below the 1st's and 0.37 below the 3rd's).
        write_mislabelled_copy(self.tmp / "copy", 10)
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(self.tmp / "copy")}):
            out = self.train_script(dropout, "--epochs", 5)    # dropout: validated in eval mode
            test_set = self.load()[1].dataset.tensors
        history = json.loads((self.out_dir / "dropout_history.json").read_text())
        losses = history["test_losses"]
        best = 1 + losses.index(min(losses))
        self.assertTrue(1 < best < 5, f"this test needs a best epoch inside the run: {losses}")
        # "Overfitting": the lowest and the final validation loss, printed with their epochs
        self.assertRegex(out, rf"Lowest validation loss: +{losses[best - 1]:.3f} at epoch {best}\b")
        self.assertRegex(out, rf"Final validation loss: +{losses[-1]:.3f} at epoch 5\b")
        for name, epoch in (("dropout_best.pt", best), ("dropout.pt", 5)):
            with self.subTest(name):
                model, checkpoint = saving.load_checkpoint(self.out_dir / name,
                                                           FashionNeuralNetwork, CPU)
                self.assertEqual(checkpoint["epoch"], epoch)
                loss, accuracy = common.evaluate(model, *test_set, CPU)   # its weights' numbers
                self.assertAlmostEqual(loss, losses[epoch - 1], places=5)
                self.assertAlmostEqual(accuracy, history["accuracies"][epoch - 1], places=6)

    def test_the_training_batches_come_in_a_new_order_each_epoch(self):
        passes = watch_networks(self)
        self.train_script(baseline, "--epochs", 2)
        images = self.load()[0].dataset.tensors[0]
        index = {image.numpy().tobytes(): i for i, image in enumerate(images)}
        batches = [x for _, training, grad, x in passes if training and grad]
        self.assertEqual([len(x) for x in batches], ([64] * 5 + [10]) * 2)
        orders = [[index[image.numpy().tobytes()] for image in torch.cat(batches[e:e + 6])]
                  for e in (0, 6)]
        for order in orders:
            self.assertEqual(sorted(order), list(range(N_TRAIN)))            # each image once
            self.assertNotEqual(order, list(range(N_TRAIN)))                 # shuffled
        self.assertNotEqual(orders[0], orders[1])                            # anew each epoch

    def test_02_prints_the_untrained_networks_accuracy_counted_by_hand(self):
        passes = watch_networks(self)
        out = self.train_script(baseline)
        untrained = copy.deepcopy(passes[0][0])             # the first network: the untrained one
        images, labels = self.load()[1].dataset.tensors
        with torch.no_grad():
            top_class = untrained(images[:64]).topk(1, dim=1)[1]            # the first test batch
        self.assertIn(f"{top_class[:10, :]}", out)
        self.assertIn("equals.shape: torch.Size([64, 1])", out)
        accuracy = float(re.search(r"^Accuracy: ([\d.]+)%$", out, re.M).group(1))
        right = (top_class.view(-1) == labels[:64]).float().mean().item()
        self.assertAlmostEqual(accuracy, right * 100, places=4)
        with torch.no_grad():
            whole = (untrained(images).argmax(dim=1) == labels).float().mean().item()
        self.assertIn(f"Accuracy on all {N_TEST} test images: {whole:.1%}", out)

    def test_the_knobs_reach_the_run(self):
        passes, steps = watch_networks(self), []
        hook = register_optimizer_step_pre_hook(lambda optimizer, *_: steps.append(optimizer))
        self.addCleanup(hook.remove)
        self.train_script(dropout, "--epochs", 2, "--batch-size", 50, "--lr", 0.01,
                          "--dropout", 0.3)
        trained = [(network, len(x)) for network, training, grad, x in passes if training and grad]
        self.assertEqual([n for _, n in trained], ([50] * 6 + [30]) * 2)
        network = trained[0][0]
        self.assertTrue(all(n is network for n, _ in trained))
        self.assertEqual([m.p for m in network.modules() if isinstance(m, nn.Dropout)], [0.3])
        self.assertEqual(len(steps), 14)                                   # a step per batch
        optimizer = steps[0]
        self.assertTrue(all(o is optimizer for o in steps))
        self.assertIsInstance(optimizer, optim.Adam)
        self.assertEqual([g["lr"] for g in optimizer.param_groups], [0.01])
        self.assertEqual({id(p) for g in optimizer.param_groups for p in g["params"]},
                         {id(p) for p in network.parameters()})
        _, checkpoint = saving.load_checkpoint(self.out_dir / "dropout.pt", FashionNeuralNetwork,
                                               CPU)
        self.assertEqual(checkpoint["dropout"], 0.3)


# ------------------------------------------------------------------- the verdict and the conclusion

class OverfittingRuleTests(unittest.TestCase):
    """common.overfitting: the one rule behind every verdict (02, 03, 05's sweep)."""
    # The notebook's own printed validation losses, 30 epochs each: its baseline climbs, its
    # dropout run wobbles (its final loss is 0.007 above its lowest).
    TUTORIAL_BASELINE = [0.434, 0.421, 0.395, 0.381, 0.360, 0.371, 0.411, 0.375, 0.377, 0.379,
                         0.372, 0.370, 0.391, 0.364, 0.396, 0.424, 0.387, 0.375, 0.376, 0.389,
                         0.417, 0.402, 0.387, 0.397, 0.386, 0.438, 0.417, 0.421, 0.431, 0.466]
    TUTORIAL_DROPOUT = [0.544, 0.439, 0.441, 0.408, 0.411, 0.402, 0.411, 0.400, 0.381, 0.398,
                        0.404, 0.401, 0.402, 0.389, 0.402, 0.387, 0.404, 0.390, 0.395, 0.376,
                        0.370, 0.387, 0.387, 0.380, 0.376, 0.390, 0.398, 0.377, 0.375, 0.377]

    def run_of(self, losses):
        n = len(losses)
        return common.Run("test", [0.3] * n, list(losses), [0.8] * n, [1.0] * n)

    def test_the_notebooks_baseline_overfits_and_its_dropout_run_does_not(self):
        self.assertTrue(common.overfitting(self.run_of(self.TUTORIAL_BASELINE))[0])
        self.assertFalse(common.overfitting(self.run_of(self.TUTORIAL_DROPOUT))[0])

    def test_a_climb_counts_only_when_it_beats_the_curves_own_noise(self):
        g = torch.Generator().manual_seed(0)
        wobble = (torch.rand(30, generator=g) - 0.5).tolist()          # uniform, spread 1
        climbing = [0.35 + 0.004 * max(0, e - 12) for e in range(30)]   # +0.07 over the last 2/3
        for size, expected in ((0.01, True), (0.4, False)):       # noise sd 0.003 or 0.12
            losses = [c + size * w for c, w in zip(climbing, wobble)]
            verdict, climb, noise = common.overfitting(self.run_of(losses))
            self.assertEqual(verdict, expected, (size, climb, noise))
        # A flat curve is never overfitting, however it wobbles; a straight climb always is.
        flat = [0.37 + 0.05 * w for w in wobble]
        self.assertFalse(common.overfitting(self.run_of(flat))[0])
        verdict, climb, noise = common.overfitting(self.run_of([0.3 + 0.01 * e for e in range(30)]))
        self.assertTrue(verdict)
        self.assertAlmostEqual(climb, 0.01 * 19)                        # epochs 11 to 30
        # A straight fall: no.
        self.assertFalse(common.overfitting(self.run_of([0.6 - 0.01 * e for e in range(30)]))[0])
        # A fall through the first ten epochs, then a climb: judged on the climb, not the fall.
        fall_then_climb = ([0.5 - 0.015 * e for e in range(10)]
                           + [0.365 + 0.003 * e for e in range(20)])
        noisy = [x + 0.005 * w for x, w in zip(fall_then_climb, wobble)]
        self.assertTrue(common.overfitting(self.run_of(noisy))[0])

    def test_under_ten_epochs_it_does_not_judge_and_says_so(self):
        nine = [0.5, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1]
        self.assertEqual(common.overfitting(self.run_of(nine))[0], None)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            common.print_summary(self.run_of([0.5, 0.4, 0.45]))
        self.assertIn("Overfitting: too few epochs to tell (it takes 10)", out.getvalue())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            common.print_summary(self.run_of(self.TUTORIAL_BASELINE))
        self.assertIn("Overfitting: yes: from epoch 11 to 30 the validation loss climbed by",
                      out.getvalue())


class ConfidenceTests(unittest.TestCase):
    @staticmethod
    def answers(*groups):
        """log_ps and labels for groups of (confidence, right answers, wrong answers): the predicted
        class has that probability, the other nine share the rest."""
        rows, labels = [], []
        for p, n_right, n_wrong in groups:
            for n in range(n_right + n_wrong):
                ps = torch.full((10,), (1 - p) / 9)
                ps[3] = p
                rows.append(ps)
                labels.append(3 if n < n_right else 7)
        return torch.log(torch.stack(rows)), torch.tensor(labels)

    def test_ece_is_zero_when_confidence_equals_accuracy_in_every_bin(self):
        c = dropout.calibration(*self.answers((0.95, 19, 1), (0.55, 11, 9)))
        self.assertAlmostEqual(c["ece"], 0.0, places=6)
        self.assertAlmostEqual(c["accuracy"], 30 / 40, places=6)

    def test_ece_and_the_loss_split_match_a_hand_count(self):
        c = dropout.calibration(*self.answers((0.9, 1, 1), (0.6, 1, 0), (0.3, 1, 0)))
        # bins 13 (0.9: half right), 9 (0.6: right), 4 (0.3: right)
        self.assertAlmostEqual(c["ece"], 2 / 4 * 0.4 + 1 / 4 * 0.4 + 1 / 4 * 0.7, places=6)
        loss_wrong = -math.log(0.1 / 9) / 4
        self.assertAlmostEqual(c["loss_wrong"], loss_wrong, places=5)
        self.assertAlmostEqual(c["loss_right"],
                               -(math.log(0.9) + math.log(0.6) + math.log(0.3)) / 4, places=5)
        self.assertAlmostEqual(c["loss_right"] + c["loss_wrong"], c["loss"], places=5)
        self.assertEqual((c["wrong"], c["sure_wrong"]), (1, 0))


# ----------------------------------------------------------------------------- step 4: inference

class LessonInferenceTests(TinyDataTestCase):
    """Step 4: what 04_inference.py draws and prints is the chosen image's own, and its numbers
    on the whole test set are a hand count."""

    def setUp(self):
        super().setUp()
        self.use_trained_dropout()
        self.model, _ = saving.load_checkpoint(self.out_dir / "dropout.pt", FashionNeuralNetwork,
                                               CPU)

    def run_04(self, *args, write=False):
        """04_inference.py's output and the figures it draws, by file name (as files too with
        write)."""
        figures = keep_figures(self, write)
        status, out, err = run_main(inference, *self.paths(), *args)
        self.assertEqual(status, 0, err)
        return out, figures

    def assert_shows(self, out, figure, img):
        """The figure draws img, (1, 1, 28, 28), beside its 10 probabilities in class order, and
        the title and the printed top 3 are its own."""
        with torch.no_grad():
            ps = torch.exp(self.model(img))[0]
        picture, bars = figure.axes
        torch.testing.assert_close(torch.as_tensor(picture.images[0].get_array()), img.view(28, 28))
        self.assertEqual([t.get_text() for t in bars.get_yticklabels()], list(common.CLASSES))
        self.assertEqual([round(b.get_y() + b.get_height() / 2) for b in bars.patches],
                         list(range(10)))
        torch.testing.assert_close(torch.tensor([b.get_width() for b in bars.patches]).float(), ps)
        torch.testing.assert_close(ps.sum(), torch.tensor(1.0))         # probabilities
        top_p, top_class = ps.topk(3)
        title = " ".join(t.get_text() for t in figure.texts)
        self.assertIn(f"predicted {common.CLASSES[top_class[0]]} ", title)
        printed = out.split("top 3:\n")[1].splitlines()[:3]
        self.assertEqual(printed, [f"  {common.CLASSES[c]:<12} {p:.3f}"
                                   for p, c in zip(top_p.tolist(), top_class.tolist())])

    def test_the_picture_and_the_top_3_are_the_learners_photos_own(self):
        photo = Image.new("RGB", (90, 120), "white")
        photo.paste((30, 30, 60), (25, 10, 65, 110))          # a dark, tall garment on white
        photo.save(self.tmp / "photo.png")
        out, figures = self.run_04("--image", self.tmp / "photo.png", write=True)
        img, _ = prepared_photo(self.tmp / "photo.png")
        self.assert_shows(out, figures["inference_image.png"], img)
        self.assertIn("negated", out)                               # said of a light background
        self.assertTrue(is_png(self.out_dir / "inference_image.png"))

    def test_04_shows_the_chosen_test_images_own_and_counts_the_test_set_by_hand(self):
        # Ten test labels one class off: mistakes to count, however well the network learnt.
        labels = write_mislabelled_copy(self.tmp / "copy", 10).long()
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(self.tmp / "copy")}):
            out, figures = self.run_04("--index", 7)
        images = self.splits["t10k"][0]
        self.assertFalse(torch.equal(images[7], images[0]))
        self.assert_shows(out, figures["inference.png"], normalised_by_hand(images[7:8]))
        # The whole test set: each class's accuracy, the pair confused most often, the confusion
        # matrix drawn and the mistakes named, each as counted here image by image.
        with torch.no_grad():
            preds = self.model(normalised_by_hand(images)).argmax(dim=1)
        confusion = torch.zeros(10, 10, dtype=torch.long)
        for true, pred in zip(labels.tolist(), preds.tolist()):
            confusion[true, pred] += 1
        wrong = (preds != labels).nonzero().view(-1).tolist()
        self.assertIn(f"({N_TEST - len(wrong)} of {N_TEST} images)", out)
        for c, name in enumerate(common.CLASSES):
            accuracy = confusion[c, c].item() / confusion[c].sum().item()
            self.assertIn(f"\n{name:<12} {accuracy:.3f}\n", out)
        a, b, both, a_as_b, b_as_a = re.search(
            r"Confused most often: (.+) and (.+), (\d+) times \((\d+) .* taken for .*, (\d+) the "
            r"other way\)", out).groups()
        a, b = common.CLASSES.index(a), common.CLASSES.index(b)
        pairs = [confusion[i, j] + confusion[j, i] for i in range(10) for j in range(i + 1, 10)]
        self.assertEqual((int(both), int(a_as_b), int(b_as_a)),
                         (max(pairs).item(), confusion[a, b].item(), confusion[b, a].item()))
        drawn = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text())
                 for t in figures["confusion_matrix.png"].axes[0].texts}    # (true, predicted)
        self.assertEqual(drawn, {(i, j): n for i, row in enumerate(confusion.tolist())
                                 for j, n in enumerate(row)})
        named = [t.get_text() for t in figures["mistakes.png"].axes[0].texts]
        self.assertEqual(named, [f"{common.CLASSES[preds[i]]}\n(is {common.CLASSES[labels[i]]})"
                                 for i in wrong[:32]])


if __name__ == "__main__":
    unittest.main()

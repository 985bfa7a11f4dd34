"""docs/exercises.md and the knobs of 05_beyond.py its questions need: every command of the doc
runs (one epoch, on tiny data), and each knob does what its help line says."""
import importlib
import os
import re
import runpy
import shlex
import subprocess
import sys
import unittest
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import common
from common import FashionNeuralNetwork
from plumbing import datafiles, saving
from tests.tiny import N_TRAIN, TinyDataTestCase, run_main

HERE = Path(__file__).resolve().parent.parent
DOC = HERE / "docs" / "exercises.md"
beyond = importlib.import_module("05_beyond")
# The bench's reading of the doc, so that the test and the bench run the same commands
exercises = runpy.run_path(str(HERE / "bench" / "exercises.py"))["exercises"]


def setUpModule():
    # The tiny data set has fewer images than Fashion-MNIST: the scripts take such a subset only
    # where this variable says so.
    patch = mock.patch.dict(os.environ, {datafiles.SUBSET_VARIABLE: "1"})
    patch.start()
    unittest.addModuleCleanup(patch.stop)


def with_value(words, flag, value):
    """The words with `flag value`, replacing the flag's value if it is there."""
    if flag in words:
        i = words.index(flag)
        return words[:i + 1] + [value] + words[i + 2:]
    return words + [flag, value]


class ExerciseCommandTests(TinyDataTestCase):
    """Every command in docs/exercises.md runs: a flag that no longer exists fails here."""

    def test_the_doc_has_at_least_8_exercises_each_with_a_command_and_an_answer(self):
        found = exercises(DOC.read_text())
        self.assertGreaterEqual(len(found), 8)
        sections = re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]
        for (title, commands, snippets), section in zip(found, sections):
            self.assertTrue(commands or snippets, title)
            self.assertIn("Guess first.", section, title)
            self.assertIn("<details><summary>Answer</summary>", section, title)

    def test_every_command_runs_for_one_epoch(self):
        for title, commands, _ in exercises(DOC.read_text()):
            # The commands of an exercise share a folder: --look-inside reads what 02 and 03 wrote
            out_dir = self.tmp / re.sub(r"\W+", "-", title)
            for command in commands:
                with self.subTest(command=command, exercise=title):
                    words = shlex.split(command)
                    self.assertEqual(words[0], "python")
                    module = importlib.import_module(Path(words[1]).stem)
                    flags = words[2:]
                    if "--look-inside" not in flags:
                        flags = with_value(flags, "--epochs", "1")
                    if "--train-size" in flags:          # the tiny data set has 330 images
                        size = min(int(flags[flags.index("--train-size") + 1]), N_TRAIN // 10)
                        flags = with_value(flags, "--train-size", str(size))
                    status, out, err = run_main(module, *flags, "--data-dir", self.data_dir,
                                                "--out-dir", out_dir, "--no-download")
                    self.assertEqual(status, 0, f"{command}: {err}")

    def test_every_snippet_prints_what_the_doc_shows(self):
        text = DOC.read_text()
        for title, _, snippets in exercises(text):
            for code in snippets:
                out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True,
                                     text=True, check=True).stdout
                for line in out.splitlines():
                    # The words as the page shows them; the number within 0.03 of the page's:
                    # torch's dropout masks for one seed differ between versions (0.207 of the
                    # units zeroed with torch 2.14, 0.195 with 2.4).
                    words, number = line.rsplit(maxsplit=1)
                    shown = re.search(re.escape(words) + r"\s+(-?[0-9.]+)", text)
                    self.assertIsNotNone(shown, f"{title}: {line}")
                    self.assertAlmostEqual(float(number), float(shown.group(1)), delta=0.03,
                                           msg=f"{title}: {line}")


class ExerciseKnobTests(TinyDataTestCase):
    """05_beyond.py's knobs for the exercises, one behaviour each."""

    def spy_on_train(self):
        """Record (model, trainloader, valloader) of each common.train call."""
        calls = []
        real_train = common.train

        def spy(model, trainloader, valloader, *args, **kwargs):
            calls.append((model, trainloader, valloader))
            return real_train(model, trainloader, valloader, *args, **kwargs)
        patch = mock.patch.object(common, "train", spy)
        patch.start()
        self.addCleanup(patch.stop)
        return calls

    def trained_images(self, *flags):
        """The images of each batch 05_beyond.py trains on, in one epoch."""
        calls = self.spy_on_train()
        self.train_script(beyond, *flags)
        (_, trainloader, _), = calls
        return torch.cat([images for images, _ in trainloader])

    def test_train_size_trains_on_n_images_of_the_training_set_the_same_for_a_seed(self):
        every = {tuple(x.flatten().tolist()) for x in self.load()[0].dataset.tensors[0]}
        first = self.trained_images("--train-size", 40)
        self.assertEqual(len(first), 40)
        kept = {tuple(x.flatten().tolist()) for x in first}
        self.assertEqual(len(kept), 40)
        self.assertLessEqual(kept, every)
        other_settings = self.trained_images("--train-size", 40, "--dropout", 0,
                                             "--batch-size", 16)
        self.assertEqual({tuple(x.flatten().tolist()) for x in other_settings}, kept)
        another_seed = self.trained_images("--train-size", 40, "--seed", 1)
        self.assertNotEqual({tuple(x.flatten().tolist()) for x in another_seed}, kept)

    def test_dropout_per_layer_zeroes_each_layer_with_its_own_p(self):
        ps = (0.1, 0.5, 0.8)
        args = beyond.parse_args(["--dropout-per-layer", *map(str, ps)])
        model = beyond.make_network(args, args.dropout).train()
        seen = {}
        layers = ("layer_input", "layer_hidden_one", "layer_hidden_two", "layer_output")
        for name in layers:
            def record(module, inputs, output, name=name):
                seen[name] = (inputs[0], output)
            getattr(model, name).register_forward_hook(record)
        torch.manual_seed(0)
        with torch.no_grad():
            model(torch.randn(2000, 784))
        for p, before, after in zip(ps, layers, layers[1:]):
            fired = F.relu(seen[before][1])            # a layer's output, before its dropout
            given = seen[after][0]                     # what the next layer got
            on = fired > 0
            zeroed = (given[on] == 0).float().mean().item()
            self.assertAlmostEqual(zeroed, p, delta=0.02, msg=f"after {before}")
            kept = given[on] != 0
            torch.testing.assert_close(given[on][kept], fired[on][kept] / (1 - p))

    def test_no_eval_validates_with_dropout_on(self):
        def recorded_and_in_eval_mode(*flags):
            self.train_script(beyond, "--dropout", 0.5, *flags)
            model, checkpoint = saving.load_checkpoint(self.out_dir / "beyond.pt",
                                                       FashionNeuralNetwork, torch.device("cpu"))
            _, testloader = self.load()
            in_eval_mode, _ = common.evaluate(model, *testloader.dataset.tensors, "cpu")
            return checkpoint["metrics"]["test_loss"], in_eval_mode
        recorded, in_eval_mode = recorded_and_in_eval_mode()
        self.assertAlmostEqual(recorded, in_eval_mode, places=5)
        recorded, in_eval_mode = recorded_and_in_eval_mode("--no-eval")
        self.assertGreater(abs(recorded - in_eval_mode), 1e-3)

    def test_dead_units_are_those_never_above_zero_counted_by_hand(self):
        torch.manual_seed(0)
        model = FashionNeuralNetwork()
        images = torch.randn(20, 1, 28, 28)
        with torch.no_grad():
            model.layer_input.bias[:10] = -100.0          # never above zero: dead
            model.layer_input.weight[10] = 0.0            # exactly zero on every image: dead too
            model.layer_input.bias[10] = 0.0
            model.layer_input.weight[11] = images[0].flatten() / 784    # active on image 0 only
            model.layer_input.bias[11] = -0.5
        weights, biases = model.layer_input.weight.detach(), model.layer_input.bias.detach()
        by_hand = []
        for unit in range(256):
            ever_active = False
            for image in images:
                if float(weights[unit] @ image.flatten() + biases[unit]) > 0:
                    ever_active = True
            if not ever_active:
                by_hand.append(unit)
        self.assertEqual(beyond.dead_units(model, images), by_hand)
        self.assertLessEqual(set(range(11)), set(by_hand))
        self.assertNotIn(11, by_hand)

    def test_look_inside_writes_the_picture_and_names_the_missing_checkpoint(self):
        self.assert_refused(beyond, ["--look-inside"], "baseline.pt", "run 02_baseline.py")
        for script in ("02_baseline", "03_dropout"):
            self.train_script(importlib.import_module(script))
        status, out, err = run_main(beyond, *self.paths(), "--look-inside")
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"Without dropout .*: \d+ of 256 first-layer units dead")
        self.assertRegex(out, r"With dropout .*: \d+ of 256 first-layer units dead")
        self.assertTrue((self.out_dir / "weights.png").read_bytes().startswith(b"\x89PNG"))


if __name__ == "__main__":
    unittest.main()

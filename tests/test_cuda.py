"""Guards the scripts on a GPU, where CUDA exists: the same lesson, a checkpoint any CPU reads."""
import unittest

import torch

import common
from common import FashionNeuralNetwork
from plumbing import saving
from tests.tiny import TinyDataTestCase, baseline, beyond, dropout, inference, is_png, run_main


@unittest.skipUnless(torch.cuda.is_available(),
                     "CUDA is not available on this machine: the GPU tests run where it is")
class CudaTests(TinyDataTestCase):
    def test_an_epoch_on_the_gpu_gives_a_checkpoint_that_a_cpu_loads_and_04_draws(self):
        out = self.train_script(baseline, "--device", "cuda")
        self.assertIn("device cuda", out)
        self.train_script(dropout, "--device", "cuda")
        for name in ("baseline_loss.png", "dropout_loss.png", "baseline_vs_dropout.png",
                     "confidence.png"):
            self.assertTrue(is_png(self.out_dir / name), name)
        # Written on the GPU, read on a CPU: the same predictions.
        gpu_model, checkpoint = saving.load_checkpoint(self.out_dir / "dropout.pt",
                                                       FashionNeuralNetwork, torch.device("cuda"))
        cpu_model, _ = saving.load_checkpoint(self.out_dir / "dropout.pt", FashionNeuralNetwork,
                                              torch.device("cpu"))
        self.assertEqual(next(cpu_model.parameters()).device.type, "cpu")
        images, labels = self.load()[1].dataset.tensors
        _, cpu_accuracy = common.evaluate(cpu_model, images, labels, torch.device("cpu"))
        _, gpu_accuracy = common.evaluate(gpu_model, images, labels, torch.device("cuda"))
        self.assertAlmostEqual(cpu_accuracy, checkpoint["metrics"]["test_accuracy"], places=2)
        self.assertAlmostEqual(gpu_accuracy, checkpoint["metrics"]["test_accuracy"], places=6)
        for device in ("cpu", "cuda"):
            with self.subTest(device):
                status, out, err = run_main(inference, *self.paths(), "--device", device)
                self.assertEqual(status, 0, err)
                for name in ("inference.png", "confusion_matrix.png", "mistakes.png"):
                    self.assertTrue(is_png(self.out_dir / name), name)

    def test_05_on_the_gpu_with_every_flag(self):
        out = self.train_script(beyond, "--device", "cuda", "--epochs", 2, "--val-split", 60,
                                "--final-fit",
                                "--mixup", 0.2, "--augment", "shift+flip", "--schedule", "cosine",
                                "--weight-decay", 0.01)
        self.assertIn("Test set, once, with the final fit's", out)
        saving.load_checkpoint(self.out_dir / "beyond_final.pt", FashionNeuralNetwork,
                               torch.device("cpu"))

"""Guards the learner's world around the scripts: a network the notebook trained and saved, the
notebook's launchers, an install's versions and downloads, Udacity's loaders counted per image."""
import contextlib
import io
import math
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import SubsetRandomSampler
from torchvision import datasets, transforms

import common
from common import FashionNeuralNetwork
from plumbing import cli, datafiles
from tests.tiny import (HERE, N_TEST, ChildRuns, NotebookLaunch, TinyDataTestCase, baseline,
                        data_step, inference, is_png, run_main, tiny_loader, train_tiny)


class Tutorial:
    """The notebook's own code, copied from it unchanged, to save a network as a learner does."""

    class FashionNeuralNetwork(nn.Module):
        '''
        This Neural Network will use ReLU as the non-linear activation function, and
        use log-softmax activation for the output and negative log likelihood function
        for our loss function.
        '''
        def __init__(self):
            # Call the super initializor to register all of the layers implemented here
            super().__init__()
            # Create layers here
            self.layer_input = nn.Linear(784,256)
            self.layer_hidden_one = nn.Linear(256,128)
            self.layer_hidden_two = nn.Linear(128,64)
            self.layer_output = nn.Linear(64,10)
        def forward(self, x):
            # Flattened the input to make sure it fits the layer input
            x = x.view(x.shape[0],-1)
            # Pass in the input to the layer and do forward propagation
            x = F.relu(self.layer_input(x))
            x = F.relu(self.layer_hidden_one(x))
            x = F.relu(self.layer_hidden_two(x))
            # Dimension = 1, to get the sum of the output across the output row matrix
            x = F.log_softmax(self.layer_output(x),dim=1)
            return x

    class Network(nn.Module):
        """Udacity's Part 6 network (fc_model.Network): other layer names, so another network."""
        def __init__(self, input_size, output_size, hidden_layers, drop_p=0.5):
            super().__init__()
            self.hidden_layers = nn.ModuleList([nn.Linear(input_size, hidden_layers[0])])
            layer_sizes = zip(hidden_layers[:-1], hidden_layers[1:])
            self.hidden_layers.extend([nn.Linear(h1, h2) for h1, h2 in layer_sizes])
            self.output = nn.Linear(hidden_layers[-1], output_size)
            self.dropout = nn.Dropout(p=drop_p)


class NotebookNetworkTests(TinyDataTestCase):
    def train_as_the_notebook_does(self):
        """The notebook's data and training cells (one channel, as today's torchvision needs), two
        epochs on the tiny data set: the trained model."""
        self.load()                          # the tiny files in place, where the notebook downloads
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.5,), (0.5,))])
        traindataset = datasets.FashionMNIST(self.data_dir, download=False, train=True,
                                             transform=transform)
        trainloader = torch.utils.data.DataLoader(dataset=traindataset, batch_size=64, shuffle=True)
        torch.manual_seed(0)
        model = Tutorial.FashionNeuralNetwork()
        loss_function = nn.NLLLoss()
        optimizer = optim.Adam(model.parameters(), lr=0.003)
        for i in range(2):
            for images, labels in trainloader:
                optimizer.zero_grad()
                log_ps = model(images)
                loss = loss_function(log_ps, labels)
                loss.backward()
                optimizer.step()
        return model

    def test_04_shows_the_network_the_notebook_trained_and_saved(self):
        model = self.train_as_the_notebook_does()
        images, labels = self.load()[1].dataset.tensors
        with torch.no_grad():
            right = (model.eval()(images).argmax(dim=1) == labels).sum().item()
        torch.save(model.state_dict(), self.tmp / "checkpoint.pth")         # Part 6's line
        torch.save({"input_size": 784, "output_size": 10, "hidden_layers": [256, 128, 64],
                    "state_dict": model.state_dict()}, self.tmp / "part6.pth")   # Part 6's dict
        for name in ("checkpoint.pth", "part6.pth"):
            with self.subTest(name):
                status, out, err = run_main(inference, *self.paths(), "--checkpoint",
                                            self.tmp / name)
                self.assertEqual(status, 0, err)
                self.assertIn("the tutorial's network, saved elsewhere", out)
                self.assertIn("its dropout and epoch are unknown", out)
                # the notebook's own network
                self.assertIn(f"({right} of {N_TEST} images)", out)
                self.assertTrue(is_png(self.out_dir / "inference.png"))

    def test_a_whole_pickled_model_is_refused_with_the_line_that_saves_its_weights(self):
        model = Tutorial.FashionNeuralNetwork()
        torch.save(model, self.tmp / "model.pth")
        # it is one
        self.assertIsInstance(torch.load(self.tmp / "model.pth", weights_only=False), nn.Module)
        err = self.assert_refused(inference, ["--checkpoint", self.tmp / "model.pth"],
                                  "holds a pickled Python object, not only weights (a whole model",
                                  "torch.save(model.state_dict(), 'checkpoint.pth')")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertNotIn("train again", err)
        self.assertNotIn("empty, truncated", err)

    def test_another_networks_weights_are_named_with_what_was_expected(self):
        part6 = Tutorial.Network(784, 10, [512, 256, 128])
        torch.save({"input_size": 784, "output_size": 10, "hidden_layers": [512, 256, 128],
                    "state_dict": part6.state_dict()}, self.tmp / "fc_model.pth")
        err = self.assert_refused(inference, ["--checkpoint", self.tmp / "fc_model.pth"],
                                  "another network",
                                  "hidden_layers.0.weight", "output.bias", "layer_input.weight",
                                  "layer_output.bias")
        self.assertNotIn("train again", err)
        weights = Tutorial.FashionNeuralNetwork().state_dict()
        nan = {k: torch.full_like(v, math.nan) for k, v in weights.items()}
        # ours in shape, but its training blew up elsewhere
        torch.save(nan, self.tmp / "nan.pth")
        self.assert_refused(inference, ["--checkpoint", self.tmp / "nan.pth"], "not numbers",
                            "train again, or pass another --checkpoint")


class LauncherTests(TinyDataTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        children = ChildRuns()
        cls.addClassCleanup(children.close)
        cls.notebook = children.add(NotebookLaunch(children.folder / "notebook",
                                                   children.local_copy))
        children.start()

    def test_a_notebooks_mplbackend_that_is_not_installed_is_not_needed(self):
        status, out, err = self.notebook.wait()
        self.assertEqual(status, 0, err[-3000:])
        self.assertTrue(is_png(self.notebook.out_dir / "samples.png"))
        # the environment as it was
        self.assertIn(f"MPLBACKEND after: {NotebookLaunch.BACKEND}", out)

    def test_output_that_cannot_be_encoded_is_escaped(self):
        out_dir = self.tmp / "выход 输出"                   # a learner's folder, on an ASCII console
        result = subprocess.run([sys.executable, "01_data.py", *map(str, self.paths()),
                                 "--out-dir", str(out_dir)], cwd=HERE, capture_output=True,
                                timeout=120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"Wrote {out_dir / 'samples.png'}".encode("ascii", "backslashreplace"),
                      result.stdout)
        # In a host, its stream is left as it was: a notebook's output takes any character.
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()), \
                self.assertRaises(SystemExit):
            cli.run_script(lambda: data_step.main(["--help"]))
        self.assertEqual(stdout.errors, "strict")

    def test_run_as_percent_run_runs_it_the_hosts_signal_handlers_stay_however_it_ends(self):
        def host(signum, frame):
            pass

        saved = {s: signal.signal(s, host) for s in (signal.SIGTERM, signal.SIGHUP)}
        self.addCleanup(lambda: [signal.signal(s, h) for s, h in saved.items()])
        self.addCleanup(setattr, sys, "argv", sys.argv)
        (self.tmp / "a-file").write_text("")
        endings = {"success": ([], None), "--help": (["--help"], None),
                   "a sentence": (["--data-dir", self.tmp / "a-file"], None),
                   "Ctrl-C": ([], KeyboardInterrupt()), "a bug": ([], ZeroDivisionError())}
        for ending, (args, raised) in endings.items():
            with self.subTest(ending), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()), \
                    mock.patch.object(common, "load_datasets", side_effect=raised,
                                      wraps=common.load_datasets):
                sys.argv = ["01_data.py", *map(str, self.paths()), *map(str, args)]
                with contextlib.suppress(SystemExit, ZeroDivisionError):
                    runpy.run_path(str(HERE / "01_data.py"), run_name="__main__")     # as %run does
                self.assertIs(signal.getsignal(signal.SIGTERM), host)
                self.assertIs(signal.getsignal(signal.SIGHUP), host)


def run_01_after_a_failed_download(test):
    """01_data.py with no local copy and a download that fails on a certificate, as torchvision
    reports it: (status, stderr, the download's own reason)."""
    empty = test.tmp / "empty"
    empty.mkdir()
    reason = "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed>"
    failure = RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, "
                           f"got:\n{reason}\n")
    with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(empty)}), \
            mock.patch.object(datafiles.datasets, "FashionMNIST", side_effect=failure):
        status, out, err = run_main(data_step, "--data-dir", test.data_dir, "--out-dir",
                                    test.out_dir)
    return status, err, reason


class InstallTests(TinyDataTestCase):
    def test_adam_is_fused_only_where_the_device_has_the_kernel(self):
        # An Apple-silicon Mac, faked: --device auto picks MPS, whose fused Adam came with torch
        # 2.5.
        with mock.patch.object(torch.cuda, "is_available", return_value=False), \
                mock.patch.object(torch.backends.mps, "is_available", return_value=True):
            device = cli.get_device("auto")
        self.assertEqual(device.type, "mps")
        for version, mps in (("2.4.0", False), ("2.4.1", False), ("2.5.0", True), ("2.14.1", True)):
            with self.subTest(version), mock.patch.object(torch, "__version__", version):
                self.assertEqual(cli.fused_adam(device), mps)
                self.assertTrue(cli.fused_adam(torch.device("cpu")))
                self.assertTrue(cli.fused_adam(torch.device("cuda")))
        # Where this torch says which devices it fuses, the choice is one of them.
        if hasattr(torch.utils._foreach_utils, "_get_fused_kernels_supported_devices"):
            fused = torch.utils._foreach_utils._get_fused_kernels_supported_devices()
            for name in ("cpu", "cuda", "mps"):
                if cli.fused_adam(torch.device(name)):
                    self.assertIn(name, fused)
        # And the scripts ask: the optimizer is fused as the helper says.
        made = []
        real_adam = optim.Adam
        with mock.patch.object(cli, "fused_adam", return_value=False) as asked, \
                mock.patch.object(optim, "Adam", side_effect=lambda *a, **kw:
                                  made.append(kw) or real_adam(*a, **kw)):
            self.train_script(baseline)
        asked.assert_called_with(torch.device("cpu"))
        self.assertEqual([kw["fused"] for kw in made], [False])

    def test_a_stalled_download_gives_up_after_its_timeout_and_says_so(self):
        # accepts connections, never answers
        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        # without a timeout: an error, not a hang
        threading.Timer(20, server.close).start()
        empty = self.tmp / "empty"
        empty.mkdir()
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(empty)}), \
                mock.patch.object(datafiles, "DOWNLOAD_TIMEOUT", 1), \
                mock.patch.object(datasets.FashionMNIST, "mirrors",
                                  [f"http://127.0.0.1:{server.getsockname()[1]}/"]):
            start = time.monotonic()
            status, out, err = run_main(data_step, "--data-dir", self.data_dir, "--out-dir",
                                        self.out_dir)
        self.assertEqual(status, 2, err)
        self.assertLess(time.monotonic() - start, 15)
        self.assertIn("The download failed: ", err.splitlines()[1])
        self.assertIn("timed out", err.splitlines()[1])
        # the process's default as it was
        self.assertIsNone(socket.getdefaulttimeout())
        self.assertEqual(list(self.raw().parent.glob("*.gz")), [])    # nothing half-downloaded left

    def test_a_failed_download_says_why_and_a_certificate_failure_how_to_fix_it(self):
        status, err, reason = run_01_after_a_failed_download(self)
        self.assertEqual((status, err.count("\n"), len(err.splitlines())), (2, 2, 2), err)
        self.assertIn("connect to the internet", err.splitlines()[0])
        self.assertTrue(err.splitlines()[1].startswith(f"The download failed: {reason}"), err)
        for phrase in (reason, 'run "Install Certificates.command"', "pip install certifi",
                       "SSL_CERT_FILE"):
            self.assertIn(phrase, err.splitlines()[1])

    def test_requirements_min_pins_the_floors_of_requirements_txt(self):
        def versions(pattern, name):
            found = re.findall(pattern, (HERE / name).read_text(), re.M)
            return {package: tuple(map(int, v.split("."))) + (0,) * (3 - v.count(".") - 1)
                    for package, v in found}

        floors = versions(r"^([\w-]+)>=([\d.]+)$", "requirements.txt")
        pins = versions(r"^([\w-]+)==([\d.]+)$", "requirements-min.txt")
        self.assertEqual({package: pins.get(package) for package in floors}, floors)
        # matplotlib before 3.8.4 does not import beside NumPy 2 (measured: 3.7.5, 3.8.0 and 3.8.3
        # fail)
        self.assertGreaterEqual(floors["matplotlib"], (3, 8, 4))


class CountedImagesTests(unittest.TestCase):
    """train() divides by the images it saw, whatever the loader leaves out."""

    def test_the_loop_counts_the_images_of_a_sampler_and_of_drop_last(self):
        torch.manual_seed(0)
        images, labels = torch.rand(300, 1, 28, 28), torch.randint(0, 10, (300,))
        dataset = torch.utils.data.TensorDataset(images, labels)
        model = FashionNeuralNetwork()
        with torch.no_grad():
            log_ps = model(images)
        loss, right = F.nll_loss(log_ps, labels, reduction="none"), log_ps.argmax(dim=1) == labels

        def one_epoch(trainloader, testloader):           # with lr=0 the weights stay: a hand count
            with contextlib.redirect_stdout(io.StringIO()):
                run = common.train(model, trainloader, testloader, nn.NLLLoss(),
                                   optim.SGD(model.parameters(), lr=0.0), 1, torch.device("cpu"))
            return run.train_losses[0], run.test_losses[0], run.accuracies[0]

        # Udacity's validation split: two SubsetRandomSamplers over the training set
        order = torch.randperm(300).tolist()
        train_idx, valid_idx = order[60:], order[:60]
        trainloader = torch.utils.data.DataLoader(dataset, batch_size=64,
                                                  sampler=SubsetRandomSampler(train_idx))
        validloader = torch.utils.data.DataLoader(dataset, batch_size=64,
                                                  sampler=SubsetRandomSampler(valid_idx))
        train_loss, valid_loss, accuracy = one_epoch(trainloader, validloader)
        self.assertAlmostEqual(train_loss, loss[train_idx].mean().item(), places=5)
        self.assertAlmostEqual(valid_loss, loss[valid_idx].mean().item(), places=5)
        self.assertAlmostEqual(accuracy, right[valid_idx].float().mean().item(), places=6)
        # drop_last: 4 batches of 64 in order, the last 44 images left out
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, drop_last=True)
        train_loss, test_loss, accuracy = one_epoch(loader, loader)
        self.assertAlmostEqual(train_loss, loss[:256].mean().item(), places=5)
        self.assertAlmostEqual(test_loss, loss[:256].mean().item(), places=5)
        self.assertAlmostEqual(accuracy, right[:256].float().mean().item(), places=6)


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

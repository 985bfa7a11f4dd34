"""The code the numbered scripts share, lesson first: the network, the training loop, the loss
plot and view_classify (steps 2 to 4 of the tutorial), then the data (step 1).

From the "plumbing" ruler on, what a learner may skip: what train() returns, files and errors,
checkpoints, finding and checking the data files, your own photo (04 --image) and the flags.
Importing it does nothing.
"""
import argparse
import errno
import gzip
import json
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F    # F's home: the tutorial's torch.functional only imports it
from matplotlib.figure import Figure
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, RandomSampler, SequentialSampler,
                              TensorDataset)
from torchvision import datasets
from torchvision.transforms.functional import pil_to_tensor

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


# --------------------------------------------------------- "Define the Neural Network" (steps 2, 3)

class FashionNeuralNetwork(nn.Module):
    """The tutorial's 784-256-128-64-10 network: ReLU, log-softmax output.

    Three hidden layers (256, 128, 64), where the tutorial's text says two. One class for both of
    its networks: dropout=0 is FashionNeuralNetwork, dropout=0.2 its FashionNeuralNetworkD.
    """

    def __init__(self, dropout=0.0):
        super().__init__()
        self.layer_input = nn.Linear(784, 256)
        self.layer_hidden_one = nn.Linear(256, 128)
        self.layer_hidden_two = nn.Linear(128, 64)
        self.layer_output = nn.Linear(64, 10)
        self.dropout = nn.Dropout(p=dropout)    # p=0 passes all through; acts in train() mode only

    def forward(self, x):
        # Flattened the input to make sure it fits the layer input
        x = x.view(x.shape[0], -1)                              # (B, 1, 28, 28) -> (B, 784)
        x = self.dropout(F.relu(self.layer_input(x)))           # (B, 256)
        x = self.dropout(F.relu(self.layer_hidden_one(x)))      # (B, 128)
        x = self.dropout(F.relu(self.layer_hidden_two(x)))      # (B, 64)
        x = F.log_softmax(self.layer_output(x), dim=1)          # (B, 10) log-probabilities
        return x


# ------------------------------------------------------------------- "Train our model" (steps 2, 3)

def train(model, trainloader, testloader, loss_function, optimizer, epochs, device,
          validated_on="test"):
    """The tutorial's training loop: each epoch, train on trainloader, then validate on testloader.

    testloader is the test set, as in the tutorial, or held-out training images (validated_on=
    "validation", 05_beyond.py). Ctrl-C or a loss that blows up ends the run cleanly.
    """
    # Initialize two empty arrays to hold the train and test loss every cycle
    train_losses, test_losses = [], []
    accuracies, seconds, weights = [], [], {}     # ours: accuracy, seconds, the weights kept
    name = validated_on.capitalize()
    try:
        for i in range(epochs):
            start = time.perf_counter()
            running_loss = 0
            # Loop through all of the train set forward and back propagate
            for images, labels in trainloader:
                images, labels = images.to(device), labels.to(device)   # (B, 1, 28, 28), (B,)
                optimizer.zero_grad()                      # Clear the previous gradients
                log_ps = model(images)                     # Forwardpropagate
                loss = loss_function(log_ps, labels)       # Calculate the loss: the batch's mean
                loss.backward()                            # Backpropagate
                optimizer.step()                           # Update the weights
                running_loss += loss.item() * len(labels)  # Accumulate the total loss (ours: a sum)

            # Initialize test loss and accuracy to be 0 for every start of cycle
            test_loss = 0
            accuracy = 0
            # Turn off the gradients
            with torch.no_grad():
                # Turn on Evaluation mode: dropout off, so the whole network is measured. The
                # tutorial's first loop has no eval()/train(); without dropout they change nothing.
                model.eval()
                for images, labels in testloader:
                    images, labels = images.to(device), labels.to(device)
                    log_ps = model(images)                           # Forwardpropagate
                    ps = torch.exp(log_ps)                           # Normalize the log-prob
                    test_loss += loss_function(log_ps, labels).item() * len(labels)  # a sum
                    top_p, top_class = ps.topk(1, dim=1)             # (B, 1): the top probability
                    equals = top_class == labels.view(*top_class.shape)   # (B, 1): vs the label
                    accuracy += equals.sum().item()                  # count the right ones (ours)
                # Turn on training mode
                model.train()

            # Ours: the sums divided by the number of images, where the tutorial divides batch
            # means by the number of batches, so its short last batch counts as much as a full one.
            train_loss = running_loss / len(trainloader.dataset)
            test_loss = test_loss / len(testloader.dataset)
            accuracy = accuracy / len(testloader.dataset)
            if not (train_loss < DIVERGED_LOSS and test_loss < DIVERGED_LOSS):     # NaN too
                print(f"Epoch: {i + 1}/{epochs}..  Training Loss: {train_loss:.3g}..  "
                      f"{name} Loss: {test_loss:.3g}: the training has blown up.")
                return Run(validated_on, train_losses, test_losses, accuracies, seconds, weights,
                           "diverged")
            weights = keep_weights(weights, model, i + 1, test_losses)   # ours: last and best epoch
            # Append the average losses to the array for plotting
            train_losses.append(train_loss)
            test_losses.append(test_loss)
            accuracies.append(accuracy)
            seconds.append(round(time.perf_counter() - start, 3))
            # Print the result: the tutorial's line, with its numbers per image
            print(f"Epoch: {i + 1}/{epochs}..  Training Loss: {train_loss:.3f}..  "
                  f"{name} Loss: {test_loss:.3f}..  {name} Accuracy: {accuracy:.3f}", flush=True)
    except KeyboardInterrupt as stop:           # Ctrl-C, or SIGTERM or SIGHUP (see run_script)
        run = Run(validated_on, train_losses, test_losses, accuracies, seconds, weights,
                  stop.stopped if isinstance(stop, Terminated) else "interrupted")
        print(f"\n{run.stopped.capitalize()} during epoch {run.epochs + 1}.")
        return run
    return Run(validated_on, train_losses, test_losses, accuracies, seconds, weights)


# A loss per image above this means the training has blown up: an untrained network's is ln(10).
DIVERGED_LOSS = 100.0


def evaluate(model, images, labels, device):
    """Loss and accuracy per image of a whole set at once, in eval mode (outside the loop)."""
    model.eval()
    with torch.no_grad():
        log_ps = model(images.to(device))
    labels = labels.to(device)
    return F.nll_loss(log_ps, labels).item(), (log_ps.argmax(dim=1) == labels).float().mean().item()


# --------------------------------------------------------------- "Plot the graph here" (steps 2, 3)

def plot_losses(runs, title):
    """The tutorial's plot of train_losses and test_losses per epoch, for one run or two (a dict
    name -> Run); the lowest validation loss marked."""
    # The tutorial's plt.plot(train_losses, label='Training Loss') and plt.plot(test_losses, ...),
    # drawn on a Figure of our own, for a PNG: a script has no notebook to show pyplot's figure in.
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for (name, run), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        epochs = range(1, run.epochs + 1)
        prefix = f"{name}: " if len(runs) > 1 else ""
        source = "the test set" if run.validated_on == "test" else "held-out training images"
        ax.plot(epochs, run.train_losses, "--", color=color, label=f"{prefix}Training Loss")
        ax.plot(epochs, run.test_losses, "-", color=color,
                label=f"{prefix}Validation Loss ({source})")
        best = run.best_epoch
        ax.plot(best, run.test_losses[best - 1], "o", color=color, markersize=8,
                markerfacecolor="none", markeredgewidth=2,
                label=f"{prefix}lowest validation loss, epoch {best}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image (NLL)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=True, fontsize=8)
    return fig


# ----------------------------------------------------------------------------- "Inference" (step 4)

def view_classify(img, ps, title):
    """The tutorial's helper.view_classify: the image beside a bar chart of its 10 probabilities.

    img: a normalised image with 784 values, ps: its probabilities (10 values); CPU or GPU tensors.
    """
    # As NumPy arrays and lists: matplotlib takes a tensor only through a deprecated conversion.
    img, ps = img.detach().cpu().view(28, 28).numpy(), ps.detach().cpu().view(10).tolist()
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(ncols=2, width_ratios=(1, 1.4))
    ax1.imshow(img, cmap="gray", vmin=-1, vmax=1)
    ax1.set_axis_off()
    ax2.barh(range(10), ps, color=["tab:orange" if p == max(ps) else "tab:blue" for p in ps])
    ax2.set_yticks(range(10), CLASSES)
    ax2.invert_yaxis()                            # label 0 at the top, as in the class list
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("probability")
    ax2.set_title("Class probability")
    fig.suptitle(title)
    return fig


# ------------------------------------------------- "Lets import the Fashion-MNIST dataset" (step 1)

def load_data(data_dir, batch_size=64, download=True):
    """Step 1 in one call: trainloader and testloader (01_data.py shows the step in full)."""
    return make_loaders(*load_datasets(data_dir, download), batch_size)


def load_datasets(data_dir, download=True, transform=None):
    """torchvision's two FashionMNIST splits, their uint8 images in .data (N, 28, 28); the files
    found, checked, or fetched first."""
    raw = ensure_raw_files(data_dir, download)
    return [checked_split(data_dir, raw, train, transform) for train in (True, False)]


def make_loaders(traindataset, testdataset, batch_size=64):
    """trainloader (shuffled) and testloader (in order) over the two splits, normalised once."""
    trainloader = make_loader(normalize(traindataset.data), traindataset.targets, batch_size,
                              shuffle=True)
    testloader = make_loader(normalize(testdataset.data), testdataset.targets, batch_size,
                             shuffle=False)
    return trainloader, testloader


def normalize(data):
    """uint8 images (N, 28, 28) -> floats (N, 1, 28, 28) in [-1, 1], once for the whole split.

    The same operations, in the same order, as the tutorial's per-image
    Compose([ToTensor(), Normalize((0.5,), (0.5,))]), so the numbers are identical.
    """
    return data.unsqueeze(1).float().div_(255).sub_(0.5).div_(0.5)


def make_loader(images, labels, batch_size, shuffle):
    """The tutorial's DataLoader, shuffled or not, each batch one indexing of the whole tensors.

    DataLoader(dataset, batch_size=64, shuffle=True) would fetch the 64 images one by one and stack
    them: a third of a fast epoch. The same samplers give the same batches in the same order.
    """
    dataset = TensorDataset(images, labels)
    sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      batch_size=None)


# ========================================================================================= plumbing
# Everything below keeps the lesson safe and is not part of it: a learner may stop reading here.

DEFAULT_DATA_DIR = "~/.pytorch/F_MNIST_data/"                 # the tutorial's torchvision root
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "outputs"
SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")       # Debian's dataset-fashion-mnist
# The four IDX files torchvision reads from ROOT/FashionMNIST/raw/: their IDX magic number (0x0803
# = unsigned bytes in 3 dimensions, 0x0801 in 1) and Fashion-MNIST's own count, which no file may
# exceed: a damaged header cannot make the scripts unpack or allocate more than the data set.
RAW_FILES = {"train-images-idx3-ubyte": (0x0803, 60000), "train-labels-idx1-ubyte": (0x0801, 60000),
             "t10k-images-idx3-ubyte": (0x0803, 10000), "t10k-labels-idx1-ubyte": (0x0801, 10000)}


# ----------------------------------------------------------------------------- what train() returns

def keep_weights(weights, model, epoch, earlier_losses):
    """train()'s weights (epoch -> state_dict) with a copy of `epoch`'s added; kept besides: the
    epoch before and the best one before it, which a Ctrl-C landing before this one still needs."""
    best = 1 + min(range(len(earlier_losses)), key=earlier_losses.__getitem__, default=-1)
    weights = {e: w for e, w in weights.items() if e in (epoch - 1, best)}
    weights[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights


@dataclass
class Run:
    """A run's history: the tutorial's train_losses and test_losses (on the set validated on)."""
    validated_on: str = "test"       # "test", as in the tutorial, or "validation" (05_beyond.py)
    train_losses: list = field(default_factory=list)
    test_losses: list = field(default_factory=list)
    accuracies: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)   # epoch -> state_dict, the last and the best epoch
    stopped: str = None     # None, "diverged", "interrupted" (Ctrl-C), "terminated", "hung up"
    test_of_best: dict = None        # with a validation split: the test set's verdict on the best

    def __post_init__(self):
        # A Ctrl-C can land between two appends: count only the epochs recorded in full.
        n = min(len(self.train_losses), len(self.test_losses), len(self.accuracies),
                len(self.seconds))
        del self.train_losses[n:], self.test_losses[n:], self.accuracies[n:], self.seconds[n:]

    @property
    def epochs(self):
        return len(self.test_losses)

    @property
    def best_epoch(self):
        if self.epochs:
            return 1 + min(range(self.epochs), key=self.test_losses.__getitem__)
        return None

    @property
    def exit_status(self):
        return {None: 0, "diverged": 1, "interrupted": 130, "terminated": 143,
                "hung up": 129}[self.stopped]

    def state(self, epoch):
        return self.weights[epoch]

    def metrics(self, epoch):
        v = self.validated_on
        m = {"epoch": epoch, "train_loss": self.train_losses[epoch - 1],
             f"{v}_loss": self.test_losses[epoch - 1], f"{v}_accuracy": self.accuracies[epoch - 1]}
        return {**m, **self.test_of_best} if self.test_of_best and epoch == self.best_epoch else m

    def to_json(self):
        return {"validated_on": self.validated_on, "train_losses": self.train_losses,
                "test_losses": self.test_losses, "accuracies": self.accuracies,
                "seconds": self.seconds}


def save_run(name, run, dropout, out_dir):
    """Write NAME_history.json, NAME.pt (the last epoch), NAME_best.pt (lowest validation loss)."""
    if not run.epochs:
        print("No epoch was completed: nothing to save.")
        return
    out_dir = Path(out_dir)
    files = {f"{name}_history.json": lambda path: write_json(path, run.to_json()),
             f"{name}.pt": lambda path: save_checkpoint(path, run.state(run.epochs), dropout,
                                                        run.metrics(run.epochs)),
             f"{name}_best.pt": lambda path: save_checkpoint(path, run.state(run.best_epoch),
                                                             dropout, run.metrics(run.best_epoch))}
    for n, (filename, write) in enumerate(files.items()):
        try:
            write(out_dir / filename)
        except WriteError as e:
            fail(f"{e}: not saved: {', '.join(list(files)[n:])}; the files before them are "
                 f"complete. {e.fix} or pass another --out-dir, and train again.", 1)
    print(f"Saved {run.epochs} epoch{'s' * (run.epochs > 1)} to {out_dir}: {name}_history.json, "
          f"{name}.pt (epoch {run.epochs}), {name}_best.pt (epoch {run.best_epoch})")


def read_history(path):
    """The Run of a history written by save_run; BadFile saying why when the file cannot be one."""
    path = Path(path)
    if not path.is_file():                         # a folder or a pipe would not do either
        raise BadFile(f"{path.name} is not in {path.parent}")
    if path.stat().st_size > 2 ** 20:              # a history of 30 epochs takes 2 KB
        raise BadFile(f"{path} is larger than any history of these scripts")
    try:
        h = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise BadFile(f"{path} cannot be read as JSON ({type(e).__name__})") from None
    keys = ("train_losses", "test_losses", "accuracies", "seconds")
    if not isinstance(h, dict) or h.get("validated_on") not in ("test", "validation") \
            or not all(isinstance(h.get(k), list) for k in keys):
        raise BadFile(f"{path} is not a history of these scripts")
    highest = {"train_losses": DIVERGED_LOSS, "test_losses": DIVERGED_LOSS, "accuracies": 1,
               "seconds": 1e6}
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= highest[k]
               for k in keys for x in h[k]):
        raise BadFile(f"{path} holds something else than losses, accuracies and seconds")
    if not h["test_losses"] or len({len(h[k]) for k in keys}) != 1:
        raise BadFile(f"{path} holds no epoch, or lists of different lengths")
    return Run(h["validated_on"], *([float(x) for x in h[k]] for k in keys))


def print_summary(run):
    """The run in numbers: lowest and final validation loss, how far it rose, the final accuracy,
    the speed."""
    v = run.validated_on
    if run.epochs:
        best, last = run.best_epoch, run.epochs
        lowest, final = run.test_losses[best - 1], run.test_losses[-1]
        rise = final - lowest
        seconds = sum(run.seconds)
        print(f"Lowest validation loss: {lowest:.3f} at epoch {best} "
              f"({v} accuracy {run.accuracies[best - 1]:.3f}), kept as the best checkpoint")
        print(f"Final validation loss:  {final:.3f} at epoch {last}, {rise:.3f} above its "
              f"lowest ({rise / lowest:.0%}){': overfitting' if rise > 0.02 else ''}")
        print(f"{f'Final {v} accuracy:':<23} {run.accuracies[-1]:.3f}")
        print(f"Time: {seconds:.1f} s for {last} epoch{'s' * (last > 1)}, "
              f"{seconds / last:.2f} s per epoch")
    if run.stopped == "diverged":
        print(f"error: the training diverged at epoch {run.epochs + 1} (a loss above "
              f"{DIVERGED_LOSS:g} or not a number): try a smaller --lr, such as the default 0.003.",
              file=sys.stderr)
    elif run.stopped:
        print(f"Kept the {run.epochs} completed epochs; run again to train all of them.",
              file=sys.stderr)


# --------------------------------------------------------------------------------- errors and files

def fail(message, status=2):
    """Stop with one sentence that says what went wrong and what to do: no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


class BadFile(Exception):
    """A file the scripts read back that cannot be used; the message says which and why."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a container's stop) or SIGHUP (the terminal closed), raised where a
    Ctrl-C would be: the same polite stop, with the shell's status for that signal."""

    def __init__(self, signum):
        super().__init__()
        self.stopped = "hung up" if signum == signal.SIGHUP else "terminated"
        self.status = 128 + signum


def _terminate(signum, frame):
    if signum == signal.SIGHUP:     # the terminal is gone: what was to show there goes nowhere
        _silence(*(s for s in (sys.stdout, sys.stderr) if s.isatty()))
    raise Terminated(signum)


def _silence(*streams):
    """Point the streams at /dev/null: their terminal, pipe or disk cannot take more."""
    for stream in filter(None, streams):                   # None: closed at the start
        with suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def run_script(main):
    """Run a script's main() for the command line: its return value is the exit status. Ctrl-C,
    SIGTERM and SIGHUP stop politely (130, 143, 129); a lost output ends quietly; an unreadable
    path and a failed write end in one sentence."""
    signal.signal(signal.SIGTERM, _terminate)
    hangup = getattr(signal, "SIGHUP", None)                 # none on Windows
    if hangup and signal.getsignal(hangup) is not signal.SIG_IGN:     # nohup keeps it ignored
        signal.signal(hangup, _terminate)
    try:
        status = main()
        if sys.stdout:                   # None when the script was started with stdout closed
            sys.stdout.flush()
    except KeyboardInterrupt as stop:
        with suppress(OSError):
            print("\nStopped: the files already written are complete.", file=sys.stderr)
        status = stop.status if isinstance(stop, Terminated) else 130
    except WriteError as e:
        status = _say(f"{e}: the file was left as it was. {e.fix} or pass another --out-dir, "
                      "and run again.", 1)
    except OSError as e:
        if e.filename is None:           # print() failed: a closed pipe (| head), terminal or disk
            _silence(sys.stdout)
            if isinstance(e, BrokenPipeError):       # its reader has all it wanted: no message
                status = 141
            else:
                status = _say(f"the output could not be written ({e.strerror or e}).", 1)
        else:                            # a path that could not be checked or read
            status = _say(f"cannot read {e.filename} ({e.strerror}): check the path and its "
                          "permissions, or pass another.", 2)
    for stream in filter(None, (sys.stdout, sys.stderr)):
        try:
            stream.flush()
        except OSError:
            _silence(stream)
    sys.exit(status)


def _say(message, status):
    """fail()'s sentence, for run_script, which has no caller left to stop: returns the status."""
    with suppress(OSError):
        print(f"error: {message}", file=sys.stderr)
    return status


class WriteError(Exception):
    """A file that could not be written, with the reason; the file before is left in place.
    .fix says what to do about that reason."""

    def __init__(self, message, errno_=None):
        super().__init__(message)
        self.fix = {errno.EISDIR: "Move away the folder of that name",
                    errno.EACCES: "Make that folder writable"}.get(errno_, "Free some space")


@contextmanager
def atomic_write(path):
    """Open `path` for writing under a temporary name, renamed into place only when complete:
    a crash, a kill or an exception at any moment leaves the old file or the new one, never half
    of one. A full disk, a lost permission or a serializer's error becomes a WriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, pickle.PicklingError) as e:
        # torch.save reports a failed write as "unexpected pos": the OSError behind it says why.
        cause = next((c for c in (e, e.__cause__, e.__context__)
                      if isinstance(c, OSError) and c.strerror), None)
        reason = cause.strerror if cause else str(e).strip().splitlines()[0][:120]
        with suppress(OSError):
            reason += f"; {shutil.disk_usage(path.parent).free // 2**20} MB free on that disk"
        raise WriteError(f"could not write {path} ({reason})", cause and cause.errno) from e
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj):
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=1) + "\n").encode())


def save_figure(fig, path):
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


def prepare_out_dir(out_dir):
    """Make the output folder and prove it writable before any training time is spent."""
    out_dir = Path(out_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except FileExistsError:
        fail(f"{out_dir} is a file, not a folder: remove it or pass another --out-dir.")
    except OSError as e:
        fail(f"cannot write to {out_dir} ({e.strerror}): pass a folder you can write to with "
             "--out-dir.")
    return out_dir


# -------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, state_dict, dropout, metrics):
    """A dict that rebuilds the network alone: weights, dropout, class names, epoch and metrics."""
    checkpoint = {"state_dict": state_dict, "dropout": dropout, "classes": list(CLASSES),
                  "epoch": metrics["epoch"], "metrics": metrics}
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, device):
    """Rebuild the network from a checkpoint file alone, in eval mode (step 4); one sentence on
    any problem."""
    try:
        return read_checkpoint(path, device)
    except BadFile as e:
        fail(str(e))


def read_checkpoint(path, device):
    """The network of a checkpoint, in eval mode, and the checkpoint; BadFile unless it would give
    numbers: the network's shape, finite weights, a dropout in [0, 1) and a whole epoch."""
    path = Path(path).expanduser()
    redo = "train again to write a fresh one, or pass another --checkpoint"
    if not path.is_file():
        raise BadFile(f"no checkpoint at {path}: train first (python 03_dropout.py writes "
                      "dropout.pt), or pass another --checkpoint.")
    # A checkpoint of this network holds about 1 MB; its zip's unpacked size is known beforehand.
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        with suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as archive:
            size = max(size, sum(member.file_size for member in archive.infolist()))
    if size > 50 * 2 ** 20:
        raise BadFile(f"{path} unpacks to {size // 2 ** 20} MB, where a checkpoint of this "
                      f"network holds about 1 MB: {redo}.")
    try:
        # A checkpoint is a pickle: weights_only=True refuses to run any code stored in one.
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception:
        raise BadFile(f"{path} is empty, truncated or not a PyTorch checkpoint: {redo}.") from None
    if not (isinstance(checkpoint, dict)
            and {"state_dict", "dropout", "epoch"} <= checkpoint.keys()):
        raise BadFile(f"{path} is not a checkpoint of these scripts (it lacks state_dict, dropout "
                      f"and epoch): {redo}.")
    dropout, epoch, state = checkpoint["dropout"], checkpoint["epoch"], checkpoint["state_dict"]
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
            and 0 <= dropout < 1):
        raise BadFile(f"{path} holds a dropout of {dropout!r}, not a probability from 0 up to 1: "
                      f"{redo}.")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        raise BadFile(f"{path} holds an epoch of {epoch!r}, not a whole number: {redo}.")
    try:
        model = FashionNeuralNetwork(dropout=dropout)
        model.load_state_dict(state)
    except Exception:
        raise BadFile(f"{path} holds a network of another shape than 784-256-128-64-10: "
                      f"{redo}.") from None
    if not all(torch.isfinite(w).all() for w in model.state_dict().values()):
        raise BadFile(f"{path} holds weights that are not numbers (NaN or infinite), as a "
                      f"training that blew up leaves: {redo}.")
    with torch.no_grad():                # and they give numbers: for black, grey and white images
        probe = model.eval()(torch.tensor([-1.0, 0.0, 1.0]).view(3, 1).expand(3, 784))
    if not torch.isfinite(probe).all():
        raise BadFile(f"{path} holds weights so large that the network's answers are not numbers:"
                      f" {redo}.")
    return model.to(device).eval(), checkpoint


# -------------------------------------------------------------- finding and checking the data files

def ensure_raw_files(data_dir, download=True):
    """Make sure DATA_DIR/FashionMNIST/raw/ holds the four sound IDX files; return that folder.

    Missing or damaged files come from, in order: .gz files already in the raw folder, a local
    copy ($FASHION_MNIST_DIR or Debian's dataset-fashion-mnist), torchvision's download.
    """
    if Path(data_dir).expanduser().is_file():
        fail(f"--data-dir {data_dir} is a file, not a folder: pass the folder that holds, or is "
             "to hold, FashionMNIST/raw/.")
    raw = Path(data_dir).expanduser() / "FashionMNIST" / "raw"
    needed = {name: problem for name in RAW_FILES if (problem := idx_problem(raw / name))}
    if not needed:
        return raw
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {raw} ({e.strerror}): pass a folder you can write to with --data-dir.")
    for name, problem in list(needed.items()):
        if problem != "missing":
            print(f"{raw / name} is damaged ({problem}); fetching it again.")
        for folder in [raw] + local_copies():
            source = next((p for p in (folder / f"{name}.gz", folder / name)
                           if p.is_file() and p != raw / name), None)
            if source is None:
                continue
            bad = _unpack(source, raw / name)
            if bad is None:
                print(f"Unpacked {source} -> {raw / name}")
                del needed[name]
                break
            if folder == raw:
                fail(f"{source} is damaged ({bad}): delete it and run again to fetch a fresh copy.")
            fix = ("replace that file" if os.environ.get("FASHION_MNIST_DIR")
                   else "reinstall dataset-fashion-mnist")
            fail(f"the local copy {source} is damaged ({bad}): {fix}.")
    why = "--no-download was given"
    if needed and download:
        for name in needed:
            (raw / name).unlink(missing_ok=True)
        try:
            datasets.FashionMNIST(Path(data_dir).expanduser(), download=True)
        except Exception as e:      # any failure means "no download"; its last line says why
            why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        needed = {name: problem for name in needed if (problem := idx_problem(raw / name))}
    if needed:
        name = next(iter(needed))
        if needed[name] != "missing":
            fail(f"{raw / name} is damaged ({needed[name]}): delete it and run again to fetch a "
                 "fresh copy.")
        env = os.environ.get("FASHION_MNIST_DIR")
        if env:
            named = ("which is not a folder" if not Path(env).expanduser().is_dir()
                     else f"which lacks {name}.gz")
            env = f" (it names {env}, {named})"
        fail(f"Fashion-MNIST is not in {raw} and could not be downloaded: connect to the internet, "
             f"or install Debian's package (apt-get install dataset-fashion-mnist), or put the "
             f"four *-ubyte.gz files in {raw} or in a folder named by FASHION_MNIST_DIR{env or ''}."
             f"\nThe download failed: {why}")
    return raw


def checked_split(data_dir, raw, train, transform):
    """torchvision's FashionMNIST split, refused in one sentence unless it holds what the raw files
    were checked to hold: 28x28 uint8 images, as many labels, each from 0 to 9."""
    root = Path(data_dir).expanduser()
    # torchvision reads FashionMNIST/processed/ instead of raw/ when an old version left it there.
    processed = root / "FashionMNIST" / "processed"
    if all((processed / name).is_file() for name in ("training.pt", "test.pt")):
        fix = f"delete {processed}, which an older torchvision wrote, and run again"
    else:       # raw files that passed idx_problem can only fail as a mismatched pair
        fix = (f"its image and label files are not a pair; put a matching pair in {raw}, or "
               "where they were copied from, and run again")
    try:
        split = datasets.FashionMNIST(root, train=train, transform=transform)
    except Exception as e:
        fail(f"torchvision cannot read Fashion-MNIST in {root} ({type(e).__name__}): {fix}.")
    images, labels = split.data, split.targets
    name = "train" if train else "t10k"
    most = RAW_FILES[f"{name}-labels-idx1-ubyte"][1]
    # Exactly what torchvision makes of the raw files: uint8 images (N, 28, 28) and int64 labels
    # (N,), whole tensors in memory, at most Fashion-MNIST's count.
    if not all(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.layout == torch.strided
               and t.is_contiguous() for t in (images, labels)) \
            or images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1:] != (28, 28) \
            or labels.dtype != torch.int64 or labels.dim() != 1 or len(images) > most:
        fail(f"the {name} split in {root} is not Fashion-MNIST's 28x28 images with labels: {fix}.")
    if len(images) != len(labels):
        fail(f"the {name} split holds {len(images)} images but {len(labels)} labels: {fix}.")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= len(CLASSES):
        fail(f"the {name} split holds no images, or a label outside 0 to 9: {fix}.")
    return split


def local_copies():
    """Folders that may hold a local copy of the four files: $FASHION_MNIST_DIR, else Debian's."""
    env = os.environ.get("FASHION_MNIST_DIR")
    return [Path(env).expanduser()] if env else [SYSTEM_COPY]


def idx_problem(path, name=None):
    """Why an IDX file of Fashion-MNIST (named `name`, by default its own name) is unusable, or
    None when sound: its header, its size, and for labels, each label from 0 to 9."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    name = name or path.name
    with open(path, "rb") as f:
        header = f.read(4 + 4 * (RAW_FILES[name][0] & 0xFF))
        problem = _header_problem(header, name)
        if problem:
            return problem
        size, expected = path.stat().st_size, _idx_size(header, name)
        if size != expected:
            return f"{size} bytes where its header promises {expected}"
        if name.endswith("labels-idx1-ubyte") and max(f.read()) >= len(CLASSES):
            return "it holds a label above 9"
    return None


def _header_problem(data, name):
    """Why the IDX header at the start of `data` cannot be that of file `name`, or None."""
    magic, most = RAW_FILES[name]
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim:
        return "too short to be an IDX file"
    if int.from_bytes(data[:4], "big") != magic:
        return "not an IDX file of this kind"
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        return f"its images are {dims[1]}x{dims[2]}, not 28x28"
    if not 0 < dims[0] <= most:
        return f"its header promises {dims[0]} items, where Fashion-MNIST has 1 to {most}"
    return None


def _idx_size(data, name):
    """The size in bytes that a sound IDX header at the start of `data` promises."""
    ndim = RAW_FILES[name][0] & 0xFF
    return 4 + 4 * ndim + math.prod(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                                    for i in range(ndim))


def _unpack(source, target):
    """Copy (or gunzip) one IDX file into place atomically; return why the source is bad or None."""
    magic, most = RAW_FILES[target.name]
    limit = 4 + 4 * (magic & 0xFF) + most * (784 if magic & 0xFF == 3 else 1)
    try:
        with (gzip.open if source.suffix == ".gz" else open)(source, "rb") as src:
            data = src.read(limit + 1)          # no more than the data set's own size
    except (OSError, EOFError, zlib.error) as e:
        return f"cannot be unpacked: {e}"
    if len(data) > limit:
        return (_header_problem(data, target.name)
                or f"it unpacks to more than the {limit} bytes this file has in Fashion-MNIST")
    try:
        with atomic_write(target) as dst:
            dst.write(data)
            dst.flush()
            # Check the copy before it is renamed into place: a bad source never replaces anything.
            problem = idx_problem(dst.name, target.name)
            if problem:
                raise ValueError(problem)
    except ValueError as e:
        return str(e)
    except WriteError as e:
        fail(f"{e}: {e.fix.lower()} or pass another --data-dir.")
    return None


# ----------------------------------------------------- a learner's own photo (04_inference --image)

def prepare_image(path):
    """A learner's own picture made as Fashion-MNIST's images were made from catalogue photos
    (Xiao et al., 2017, section 2): negated when its background is light, trimmed to the garment,
    its longest side scaled to 28 pixels, centred. Returns the image (1, 1, 28, 28) in [-1, 1]
    and a note on what was done to it."""
    path = Path(path).expanduser()
    pixels = _gray_pixels(_open_image(path), path)                      # (H, W) floats, 0 to 255
    border = torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = border.median().item()
    # Negated, so that a garment on a light background comes out light on black, as in the data
    # set; and scaled so that the background, whatever its shade, becomes 0.
    light = background > 127
    if light:
        pixels = (background - pixels) * (255 / background)
    else:
        pixels = (pixels - background) * (255 / max(255 - background, 1))
    pixels = pixels.clamp(0, 255)
    note = "negated: its background was light" if light else "as given: its background was dark"
    # Trimmed to the garment: the pixels further from the background than 5% of full intensity.
    garment = pixels > 0.05 * 255
    canvas = torch.zeros(28, 28)
    if not garment.any():
        note += "; the picture seemed empty: the network sees black"
        return normalize(canvas[None].to(torch.uint8)), note
    rows, cols = garment.any(dim=1).nonzero().view(-1), garment.any(dim=0).nonzero().view(-1)
    pixels = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Its longest side scaled to 28 pixels, the aspect kept, then centred on a black square.
    h, w = pixels.shape
    size = (max(1, round(28 * h / max(h, w))), max(1, round(28 * w / max(h, w))))
    small = F.interpolate(pixels[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
    top, left = (28 - size[0]) // 2, (28 - size[1]) // 2
    canvas[top:top + size[0], left:left + size[1]] = small
    return normalize(canvas.clamp(0, 255).round()[None].to(torch.uint8)), note


def _open_image(path):
    """The picture at `path`, decoded (the first frame of several); one sentence if it cannot be."""
    if not path.is_file():
        fail(f"no image file at {path}: check the path given to --image.")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None       # read the size first, to refuse a huge picture by it
        with Image.open(path) as image:
            if limit and image.width * image.height > limit:
                fail(f"{path} is {image.width}x{image.height} pixels, over the {limit} pixels that "
                     "PIL decodes safely: scale it down (1000 pixels a side is plenty) and pass "
                     "that to --image.")
            image = ImageOps.exif_transpose(image)     # decoded; a photo taken sideways upright
        image.thumbnail((1024, 1024), Image.Resampling.BOX)   # plenty for 28x28, and bounded work
    except UnidentifiedImageError:
        fail(f"{path} is not an image that can be read: pass a PNG or JPEG file to --image.")
    except Exception as e:               # each decoder raises its own: all mean "cannot decode"
        fail(f"{path} cannot be decoded ({type(e).__name__}: {e}): save it again as PNG or JPEG "
             "and pass that to --image.")
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return image


def _gray_pixels(image, path):
    """Any PIL image as grayscale floats (H, W) from 0 to 255; transparent parts white, as paper."""
    try:
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):    # 16 and 32 bits a pixel
            pixels = pil_to_tensor(image.convert("F"))[0]
            low, high = pixels.min(), pixels.max()
            if not (torch.isfinite(low) and torch.isfinite(high)):
                pixels = pixels.nan_to_num(0, 0, 0)
                low, high = pixels.min(), pixels.max()
            return ((pixels - low) * (255 / (high - low)) if high > low
                    else torch.full_like(pixels, 255.0))
        if image.mode == "LAB":
            return pil_to_tensor(image.getchannel("L"))[0].float()
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"),
                                          image.convert("RGBA"))
        return pil_to_tensor(image.convert("L"))[0].float()
    except Exception:
        fail(f"{path} is a {image.mode} image, which cannot be made grayscale here: "
             "save it as PNG or JPEG and pass that to --image.")


# -------------------------------------------------------------------------------------------- flags

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each help line ends with its default, except where there is none to state."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def make_parser(doc):
    """The flags every script has: where the data is and where the outputs go."""
    # doc is the script's docstring: None under python -OO, which drops docstrings.
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--data-dir", type=path_arg, default=DEFAULT_DATA_DIR,
                        help="torchvision root; the IDX files live in DATA_DIR/FashionMNIST/raw/")
    parser.add_argument("--out-dir", type=path_arg, default=str(DEFAULT_OUT_DIR),
                        help="folder for plots, histories, checkpoints")
    parser.add_argument("--no-download", action="store_true",
                        help="never download; use only local copies of the data")
    return parser


def add_dropout_arg(parser):
    parser.add_argument("--dropout", type=probability, default=0.2,
                        help="probability of zeroing each hidden unit while training")


def add_device_arg(parser):
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto picks CUDA, then Apple's MPS, then the CPU")


def make_training_parser(doc):
    """The flags of the training scripts: the tutorial's knobs, its values as defaults."""
    parser = make_parser(doc)
    parser.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    parser.add_argument("--batch-size", type=_number(int, 1, 60001), default=64,
                        help="images per batch")
    parser.add_argument("--lr", type=positive_float, default=0.003, help="Adam's learning rate")
    parser.add_argument("--seed", type=_number(int, 0, 2 ** 64), default=0,   # torch.manual_seed's
                        help="random seed: the same seed gives the same run")
    add_device_arg(parser)
    return parser


def get_device(name):
    """The device --device names; 'auto' picks CUDA, then Apple's MPS, then the CPU."""
    available = [d for d, ok in (("cuda", torch.cuda.is_available()),
                                 ("mps", torch.backends.mps.is_available()), ("cpu", True)) if ok]
    if name == "auto":
        return torch.device(available[0])
    if name not in available:
        fail(f"--device {name} is not available on this machine; use --device auto or one of: "
             f"{', '.join(available)}.")
    return torch.device(name)


def path_arg(text):
    """An argparse type for a path: an empty one is refused, not read as "not given"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a path, or leave the flag out")
    return text


def _number(kind, low, high=None, low_open=False):
    """An argparse type for a number in [low, high) (or (low, high) when low_open), saying the
    range when refused."""
    if high is not None:
        allowed = (f"from {low} to {high - 1}" if kind is int
                   else f"from {low} up to but not including {high}")
    else:
        allowed = f"greater than {low}" if low_open else f"at least {low}"
    what = "a whole number" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; use {what} {allowed}") \
                from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or \
                (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range; use {what} {allowed}")
        return value
    return parse


positive_int = _number(int, 1)
positive_float = _number(float, 0, low_open=True)
non_negative_int = _number(int, 0)
non_negative_float = _number(float, 0)
probability = _number(float, 0, 1)

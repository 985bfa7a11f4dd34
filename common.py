"""What more than one step of the lesson needs: data, network, training loop, plots, checkpoints.

The numbered scripts tell the tutorial (../shared/tutorial.md) step by step; the mechanics
they share live here, each helper saying which step uses it. Importing this module does nothing.
"""
import argparse
import gzip
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets
from torchvision.transforms.functional import pil_to_tensor

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_DATA_DIR = "~/.pytorch/F_MNIST_data/"                 # the tutorial's torchvision root
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "outputs"
SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")       # Debian's dataset-fashion-mnist
# The four IDX files torchvision reads from ROOT/FashionMNIST/raw/, with their IDX magic number:
# 0x0803 = unsigned bytes in 3 dimensions (images), 0x0801 = unsigned bytes in 1 dimension (labels).
RAW_FILES = {"train-images-idx3-ubyte": 0x0803, "train-labels-idx1-ubyte": 0x0801,
             "t10k-images-idx3-ubyte": 0x0803, "t10k-labels-idx1-ubyte": 0x0801}
# A loss per image above this means the training has blown up: the untrained network's is ln(10) = 2.3.
DIVERGED_LOSS = 100.0


# ----------------------------------------------------------------------------- errors and files

def fail(message, status=2):
    """Stop with one sentence that says what went wrong and what to do: no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


@contextmanager
def atomic_write(path):
    """Open `path` for writing under a temporary name, renamed into place only when complete.

    A crash, a kill or an exception at any moment leaves the old file or the new one, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
        fail(f"cannot write to {out_dir} ({e.strerror}): pass a folder you can write to with --out-dir.")
    return out_dir


def run_script(main):
    """Run a script's main() for the command line: its return value is the exit status; Ctrl-C ends quietly."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted: the files already written are complete.", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------- arguments

def _number(kind, low, high=None, low_open=False):
    """An argparse type for a number in [low, high) (or (low, high) when low_open), saying the range when refused."""
    if high is not None:
        allowed = f"from {low} up to but not including {high}"
    else:
        allowed = f"greater than {low}" if low_open else f"at least {low}"
    what = "a whole number" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; use {what} {allowed}") from None
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


def make_parser(doc):
    """The flags every script has: where the data is and where the outputs go."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="torchvision root; the IDX files live in DATA_DIR/FashionMNIST/raw/")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="folder for plots, histories, checkpoints")
    parser.add_argument("--no-download", action="store_true",
                        help="never download; use only local copies of the data")
    return parser


def add_device_arg(parser):
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto picks CUDA, then Apple's MPS, then the CPU")


def make_training_parser(doc):
    """The flags of 02_baseline.py and 03_dropout.py, with the tutorial's values as defaults."""
    parser = make_parser(doc)
    parser.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    parser.add_argument("--lr", type=positive_float, default=0.003, help="Adam's learning rate")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                        help="L2 regularisation (decoupled, AdamW); 0 is the tutorial's plain Adam")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same run")
    add_device_arg(parser)
    return parser


def get_device(name):
    """The device --device names; 'auto' picks CUDA, then Apple's MPS, then the CPU."""
    available = [d for d, ok in (("cuda", torch.cuda.is_available()),
                                 ("mps", torch.backends.mps.is_available()), ("cpu", True)) if ok]
    if name == "auto":
        return torch.device(available[0])
    if name not in available:
        fail(f"--device {name} is not available on this machine; use --device auto or one of: {', '.join(available)}.")
    return torch.device(name)


# ----------------------------------------------------------------------------- data (step 1)

def idx_problem(path, name=None):
    """Why an IDX file of Fashion-MNIST (named `name`, by default its own name) is unusable, or None when sound."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    expected_magic = RAW_FILES[name or path.name]
    ndim = expected_magic & 0xFF
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        return "too short to be an IDX file"
    if int.from_bytes(header[:4], "big") != expected_magic:
        return "not an IDX file of this kind"
    dims = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        return f"its images are {dims[1]}x{dims[2]}, not 28x28"
    expected_size = len(header) + math.prod(dims)
    size = path.stat().st_size
    if size != expected_size:
        return f"{size} bytes where its header promises {expected_size}"
    return None


def _unpack(source, target):
    """Copy (or gunzip) one IDX file into place atomically; return why the source is bad, or None."""
    try:
        with (gzip.open if source.suffix == ".gz" else open)(source, "rb") as src, atomic_write(target) as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            # Check the copy before it is renamed into place, so a bad source never replaces anything.
            problem = idx_problem(dst.name, target.name)
            if problem:
                raise ValueError(problem)
    except (OSError, EOFError, zlib.error) as e:
        return f"cannot be unpacked: {e}"
    except ValueError as e:
        return str(e)
    return None


def local_copies():
    """Folders that may hold a local copy of the four files: $FASHION_MNIST_DIR, else Debian's package."""
    env = os.environ.get("FASHION_MNIST_DIR")
    return [Path(env).expanduser()] if env else [SYSTEM_COPY]


def ensure_raw_files(data_dir, download=True):
    """Make sure DATA_DIR/FashionMNIST/raw/ holds the four sound IDX files; return that folder.

    Missing or damaged files come from, in order: .gz files already in the raw folder, a local copy
    ($FASHION_MNIST_DIR or Debian's dataset-fashion-mnist), torchvision's download. Used by every script.
    """
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
            source = next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file() and p != raw / name), None)
            if source is None:
                continue
            bad = _unpack(source, raw / name)
            if bad is None:
                print(f"Unpacked {source} -> {raw / name}")
                del needed[name]
                break
            if folder == raw:
                fail(f"{source} is damaged ({bad}): delete it and run again to fetch a fresh copy.")
            fail(f"the local copy {source} is damaged ({bad}): reinstall dataset-fashion-mnist or replace that file.")
    if needed and download:
        for name in needed:
            (raw / name).unlink(missing_ok=True)
        try:
            datasets.FashionMNIST(Path(data_dir).expanduser(), download=True)
        except Exception:           # torchvision raises RuntimeError or URLError; any failure means "no download"
            pass
        needed = {name: problem for name in needed if (problem := idx_problem(raw / name))}
    if needed:
        name = next(iter(needed))
        if needed[name] != "missing":
            fail(f"{raw / name} is damaged ({needed[name]}): delete it and run again to fetch a fresh copy.")
        fail(f"Fashion-MNIST is not in {raw} and could not be downloaded: connect to the internet, "
             f"or install Debian's package (apt-get install dataset-fashion-mnist), "
             f"or put the four *-ubyte.gz files in {raw} or in a folder named by FASHION_MNIST_DIR.")
    return raw


def load_datasets(data_dir, download=True):
    """The two splits as torchvision datasets, with their uint8 images in .data (N, 28, 28)."""
    raw = ensure_raw_files(data_dir, download)
    splits = [datasets.FashionMNIST(Path(data_dir).expanduser(), train=train) for train in (True, False)]
    for split, prefix in zip(splits, ("train", "t10k")):
        if len(split.data) != len(split.targets):
            fail(f"{raw}/{prefix}-images-idx3-ubyte holds {len(split.data)} images but its labels file "
                 f"{len(split.targets)} labels: delete both and run again to fetch a matching pair.")
    return splits


def normalize(data):
    """uint8 images (N, 28, 28) -> floats (N, 1, 28, 28) in [-1, 1], once for the whole split.

    The same operations, in the same order, as the tutorial's per-image
    Compose([ToTensor(), Normalize((0.5,), (0.5,))]), so the numbers are identical.
    """
    return data.unsqueeze(1).float().div_(255).sub_(0.5).div_(0.5)


def make_loader(images, labels, batch_size, shuffle):
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle)


def make_loaders(traindataset, testdataset, batch_size=64):
    """trainloader (shuffled) and testloader over the two splits, each normalised once."""
    trainloader = make_loader(normalize(traindataset.data), traindataset.targets, batch_size, shuffle=True)
    testloader = make_loader(normalize(testdataset.data), testdataset.targets, batch_size, shuffle=False)
    return trainloader, testloader


def load_data(data_dir, batch_size=64, download=True):
    """Step 1 in one call, for the later scripts: find the data, normalise it, batch it."""
    return make_loaders(*load_datasets(data_dir, download), batch_size)


def hold_out(trainloader, n, seed):
    """Split n training images off as a validation set, the same ones for the same seed (03_dropout.py --val-split)."""
    images, labels = trainloader.dataset.tensors
    if not 0 < n < len(images):
        fail(f"--val-split {n} must leave training images: use a number from 1 to {len(images) - 1}.")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n], order[n:]
    return (make_loader(images[train], labels[train], trainloader.batch_size, shuffle=True),
            make_loader(images[val], labels[val], trainloader.batch_size, shuffle=False))


class Augmented:
    """A trainloader whose batches come randomly shifted by up to `shift` pixels, and, with flip,
    mirrored left-right: labels stay true, and whole batches at once keep the epoch fast (03 --augment)."""

    def __init__(self, loader, shift=2, flip=False):
        self.loader, self.dataset, self.shift, self.flip = loader, loader.dataset, shift, flip

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        s = self.shift
        for images, labels in self.loader:                                   # (B, 1, 28, 28)
            b = len(images)
            if self.flip:
                mirror = torch.rand(b, 1, 1, 1) < 0.5
                images = torch.where(mirror, images.flip(-1), images)
            padded = F.pad(images, (s, s, s, s), value=-1.0)                  # black border, (B, 1, 28+2s, 28+2s)
            dy, dx = torch.randint(0, 2 * s + 1, (2, b, 1))
            rows = (torch.arange(28) + dy)[:, :, None]                         # (B, 28, 1)
            cols = (torch.arange(28) + dx)[:, None, :]                         # (B, 1, 28)
            yield padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1), labels


# ----------------------------------------------------------------------------- network (step 2)

class FashionNeuralNetwork(nn.Module):
    """The tutorial's 784-256-128-64-10 network: ReLU, log-softmax output.

    dropout=0 is its first network, dropout=0.2 its FashionNeuralNetworkD.
    """

    def __init__(self, dropout=0.0):
        super().__init__()
        self.layer_input = nn.Linear(784, 256)
        self.layer_hidden_one = nn.Linear(256, 128)
        self.layer_hidden_two = nn.Linear(128, 64)
        self.layer_output = nn.Linear(64, 10)
        self.dropout = nn.Dropout(p=dropout)     # active only in model.train() mode

    def forward(self, x):
        x = x.view(x.shape[0], -1)                              # (B, 1, 28, 28) -> (B, 784)
        x = self.dropout(F.relu(self.layer_input(x)))           # (B, 256)
        x = self.dropout(F.relu(self.layer_hidden_one(x)))      # (B, 128)
        x = self.dropout(F.relu(self.layer_hidden_two(x)))      # (B, 64)
        return F.log_softmax(self.layer_output(x), dim=1)       # (B, 10) log-probabilities


def make_optimizer(model, lr, weight_decay, device):
    """The tutorial's Adam; with weight decay, AdamW (steps 2 and 3)."""
    fused = device.type in ("cpu", "cuda")     # one kernel for all weights: about 15% faster epochs on 2 CPU cores
    if weight_decay == 0:
        return optim.Adam(model.parameters(), lr=lr, fused=fused)
    # Adam's own weight_decay adds L2 to the gradient, where Adam's per-weight scaling then weakens it
    # unevenly; AdamW shrinks every weight by lr * weight_decay directly (Loshchilov & Hutter, 2019).
    return optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


# ----------------------------------------------------------------------------- training loop (steps 2 and 3)

@dataclass
class TrainingRun:
    """What train() returns: the history of the completed epochs, and the weights of the last and the best."""
    history: list = field(default_factory=list)   # one dict per completed epoch
    val_name: str = "test"                         # the set validated on each epoch: "test" or "validation"
    states: dict = field(default_factory=dict)     # epoch -> weights, kept for the last and the best epoch
    stopped: str = None                            # None, "interrupted" or "diverged"

    @property
    def best(self):
        return min(self.history, key=lambda h: h[f"{self.val_name}_loss"]) if self.history else None

    @property
    def last_state(self):
        return self.states[self.history[-1]["epoch"]] if self.history else None

    @property
    def best_state(self):
        return self.states[self.best["epoch"]] if self.history else None

    @property
    def exit_status(self):
        return {None: 0, "diverged": 1, "interrupted": 130}[self.stopped]


def train_one_epoch(model, trainloader, optimizer, loss_function, device, scheduler=None):
    """One pass over the training set; returns the loss per image."""
    model.train()
    running_loss = 0.0
    for images, labels in trainloader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        log_ps = model(images)
        loss = loss_function(log_ps, labels)          # mean over this batch
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        running_loss += loss.item() * len(labels)     # the batch's sum: the last batch is smaller
    return running_loss / len(trainloader.dataset)


def evaluate(model, loader, loss_function, device):
    """Loss and accuracy per image over a whole set, in eval mode without gradients."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            log_ps = model(images)
            total_loss += loss_function(log_ps, labels).item() * len(labels)
            top_p, top_class = log_ps.topk(1, dim=1)                   # (B, 1)
            equals = top_class == labels.view(*top_class.shape)        # (B, 1) bools
            correct += equals.sum().item()
    return total_loss / len(loader.dataset), correct / len(loader.dataset)


def _copy_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(model, trainloader, valloader, optimizer, loss_function, epochs, device,
          scheduler=None, val_name="test"):
    """Train and validate each epoch, printing the tutorial's line; stop cleanly on Ctrl-C or divergence.

    The model ends with the weights of the last completed epoch, never those of a broken one.
    """
    run = TrainingRun(val_name=val_name)
    label = val_name.capitalize()
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            train_loss = train_one_epoch(model, trainloader, optimizer, loss_function, device, scheduler)
            val_loss, val_accuracy = evaluate(model, valloader, loss_function, device)
            if not train_loss < DIVERGED_LOSS or not val_loss < DIVERGED_LOSS:     # also true for NaN
                run.stopped = "diverged"
                print(f"Epoch: {epoch}/{epochs}..  Training Loss: {train_loss:.3g}..  {label} Loss: {val_loss:.3g}: "
                      "the training has blown up.")
                break
            # The weights first, then the record: a Ctrl-C between the two lines never leaves an
            # epoch in the history without its weights.
            run.states[epoch] = _copy_state(model)
            run.history.append({"epoch": epoch, "train_loss": train_loss, f"{val_name}_loss": val_loss,
                                f"{val_name}_accuracy": val_accuracy,
                                "seconds": round(time.perf_counter() - start, 3)})
            run.states = {e: run.states[e] for e in {epoch, run.best["epoch"]}}
            print(f"Epoch: {epoch}/{epochs}..  Training Loss: {train_loss:.3f}..  "
                  f"{label} Loss: {val_loss:.3f}..  {label} Accuracy: {val_accuracy:.3f}", flush=True)
    except KeyboardInterrupt:
        run.stopped = "interrupted"
        print(f"\nInterrupted during epoch {len(run.history) + 1}.")
    if run.history:
        model.load_state_dict(run.last_state)
    return run


# ----------------------------------------------------------------------------- saving a run (steps 2 and 3)

def write_json(path, obj):
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=1) + "\n").encode())


def save_figure(fig, path):
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


def save_checkpoint(path, state_dict, dropout, metrics):
    """A dict that rebuilds the network alone: weights, dropout, class names, the epoch and its metrics."""
    checkpoint = {"state_dict": state_dict, "dropout": dropout, "classes": list(CLASSES),
                  "epoch": metrics["epoch"], "metrics": metrics}
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, device):
    """Rebuild the network from a checkpoint file alone, in eval mode (step 4); one sentence on any problem."""
    path = Path(path).expanduser()
    redo = "run 02_baseline.py or 03_dropout.py again to write a fresh one, or pass another --checkpoint"
    if not path.is_file():
        fail(f"no checkpoint at {path}: run python 03_dropout.py first, or pass --checkpoint PATH.")
    try:
        # A checkpoint is a pickle: weights_only=True refuses to run any code stored in one.
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception:
        fail(f"{path} is empty, truncated or not a PyTorch checkpoint: {redo}.")
    if not isinstance(checkpoint, dict) or not {"state_dict", "dropout", "epoch"} <= checkpoint.keys():
        fail(f"{path} is not a checkpoint of these scripts (it lacks state_dict, dropout and epoch): {redo}.")
    try:
        model = FashionNeuralNetwork(dropout=checkpoint["dropout"])
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, ValueError, AttributeError):
        fail(f"{path} holds a network of another shape than 784-256-128-64-10: {redo}.")
    return model.to(device).eval(), checkpoint


def plot_losses(runs, title):
    """Training and validation loss per epoch for one or more named runs; the lowest validation loss marked."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for (name, run), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        epochs = [h["epoch"] for h in run.history]
        val_key = f"{run.val_name}_loss"
        prefix = f"{name}: " if len(runs) > 1 else ""
        ax.plot(epochs, [h["train_loss"] for h in run.history], "--", color=color, label=f"{prefix}training loss")
        source = "the test set" if run.val_name == "test" else "held-out training images"
        ax.plot(epochs, [h[val_key] for h in run.history], "-", color=color,
                label=f"{prefix}validation loss ({source})")
        best = run.best
        ax.plot(best["epoch"], best[val_key], "o", color=color, markersize=8, markerfacecolor="none",
                markeredgewidth=2, label=f"{prefix}lowest validation loss, epoch {best['epoch']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image (NLL)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=True, fontsize=8)
    return fig


def save_run(name, run, dropout, out_dir, title):
    """Write NAME_history.json, NAME_loss.png, NAME.pt (last epoch) and NAME_best.pt (lowest validation loss)."""
    if not run.history:
        print("No epoch was completed: nothing to save.")
        return
    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}_history.json", run.history)
    save_figure(plot_losses({name: run}, title), out_dir / f"{name}_loss.png")
    save_checkpoint(out_dir / f"{name}.pt", run.last_state, dropout, run.history[-1])
    save_checkpoint(out_dir / f"{name}_best.pt", run.best_state, dropout, run.best)
    kept = f"{len(run.history)} epoch{'s' * (len(run.history) > 1)}"
    print(f"Saved {kept} to {out_dir}: {name}_history.json, {name}_loss.png, "
          f"{name}.pt (epoch {run.history[-1]['epoch']}), {name}_best.pt (epoch {run.best['epoch']})")


def read_history(path):
    """A history written by save_run, or None when there is none or it is unreadable (03_dropout.py's comparison)."""
    try:
        history = json.loads(Path(path).read_text())
        val_name = "validation" if "validation_loss" in history[0] else "test"
        if all({"epoch", "train_loss", f"{val_name}_loss", f"{val_name}_accuracy"} <= h.keys() for h in history):
            return TrainingRun(history=history, val_name=val_name)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        pass
    return None


def print_summary(run):
    """The run in numbers: lowest and final validation loss, how far it rose, the final accuracy, the speed."""
    v = run.val_name
    if run.history:
        best, last = run.best, run.history[-1]
        rise = last[f"{v}_loss"] - best[f"{v}_loss"]
        seconds = sum(h["seconds"] for h in run.history)
        print(f"Lowest validation loss: {best[f'{v}_loss']:.3f} at epoch {best['epoch']} "
              f"({v} accuracy {best[f'{v}_accuracy']:.3f}), kept as the best checkpoint")
        print(f"Final validation loss:  {last[f'{v}_loss']:.3f} at epoch {last['epoch']}, {rise:.3f} above its "
              f"lowest ({rise / best[f'{v}_loss']:.0%}){': overfitting' if rise > 0.02 else ''}")
        print(f"Final {v} accuracy:    {last[f'{v}_accuracy']:.3f}")
        n = len(run.history)
        print(f"Time: {seconds:.1f} s for {n} epoch{'s' * (n > 1)}, {seconds / n:.2f} s per epoch")
    if run.stopped == "diverged":
        print(f"error: the training diverged at epoch {len(run.history) + 1} (a loss above {DIVERGED_LOSS:g} "
              "or not a number): try a smaller --lr, such as the default 0.003.", file=sys.stderr)
    elif run.stopped == "interrupted":
        print(f"Kept the {len(run.history)} completed epochs; run again to train all of them.", file=sys.stderr)


# ----------------------------------------------------------------------------- inference (step 4)

def view_classify(img, ps, title):
    """The tutorial's helper.view_classify: the image beside a bar chart of its 10 class probabilities.

    img: a normalised image with 784 values, ps: its probabilities (10 values); CPU or GPU tensors.
    """
    img, ps = img.detach().cpu().view(28, 28), ps.detach().cpu().view(10)
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(ncols=2, width_ratios=(1, 1.4))
    ax1.imshow(img, cmap="gray", vmin=-1, vmax=1)
    ax1.set_axis_off()
    ax2.barh(range(10), ps, color=["tab:orange" if i == ps.argmax() else "tab:blue" for i in range(10)])
    ax2.set_yticks(range(10), CLASSES)
    ax2.invert_yaxis()                            # label 0 at the top, as in the class list
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("probability")
    ax2.set_title("Class probability")
    fig.suptitle(title)
    return fig


def prepare_image(path):
    """A learner's own PNG or JPEG as the network expects it: 28x28, light garment on black, normalised.

    Returns the image (1, 1, 28, 28) and whether it was inverted (its background was light).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        fail(f"no image file at {path}: check the path given to --image.")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError):
        fail(f"{path} is not an image that can be read: pass a PNG or JPEG file to --image.")
    if image.format not in ("PNG", "JPEG"):
        fail(f"{path} is a {image.format} image: save it as PNG or JPEG and pass that to --image.")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    gray = image.convert("L")
    # Fashion-MNIST shows light clothes on black; most photos are the reverse.
    inverted = _border(gray).mean().item() > 127
    if inverted:
        gray = ImageOps.invert(gray)
    # Then as Fashion-MNIST's own images were made: the background set to black, the picture trimmed
    # to the garment, its longest side scaled to 28 pixels, centred on a black square.
    background, top = _border(gray).quantile(0.9).item(), gray.getextrema()[1]
    gray = gray.point(lambda p: 0 if p <= background else round(255 * (p - background) / (top - background)))
    if gray.getbbox():
        gray = gray.crop(gray.getbbox())
    gray = ImageOps.contain(gray, (28, 28), Image.Resampling.LANCZOS)     # keeps the aspect ratio
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(gray, ((28 - gray.width) // 2, (28 - gray.height) // 2))
    return normalize(pil_to_tensor(canvas)), inverted


def _border(gray):
    """The outermost pixels of a grayscale PIL image, as floats."""
    pixels = pil_to_tensor(gray)[0].float()                              # (H, W)
    return torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])

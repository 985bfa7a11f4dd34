"""Safe writes, histories and checkpoints.

Keeps safe: every file a script writes. Each is written under a temporary name and renamed into
place only when complete, so a crash, a kill or a full disk leaves the old file or the new one,
never half of one; what is read back (a history, a checkpoint) is checked before it is used.
"""
import json
import os
import pickle
import tempfile
import zipfile
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from torchvision import datasets

from plumbing.errors import BadFile, WriteError, fail

# No history of these scripts holds a loss per image this large (an untrained network's is 2.3).
LARGEST_LOSS = 1000.0


# ------------------------------------------------------------------------------------ safe writes

@contextmanager
def atomic_write(path):
    """Open `path` for writing under a temporary name, renamed into place only when complete:
    a crash, a kill or an exception at any moment leaves the old file or the new one, never half
    of one. A full disk, a lost permission or a serializer's error becomes a WriteError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _write_errors(path):
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        with suppress(OSError):         # a failed cleanup never hides the failure that caused it
            tmp.unlink(missing_ok=True)


@contextmanager
def _write_errors(path, outcome="the file was left as it was"):
    """Any failure to write `path` as a WriteError that names its cause."""
    try:
        yield
    except (OSError, RuntimeError, pickle.PicklingError) as e:
        raise WriteError(path, e, outcome) from e


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


# -------------------------------------------------------------------------- a run's history

def metrics(run, epoch):
    """One epoch's numbers, as its checkpoint keeps them."""
    v = run.validated_on
    m = {"epoch": epoch, "train_loss": run.train_losses[epoch - 1],
         f"{v}_loss": run.test_losses[epoch - 1], f"{v}_accuracy": run.accuracies[epoch - 1]}
    return {**m, **run.test_of_best} if run.test_of_best and epoch == run.best_epoch else m


def history(run):
    """What NAME_history.json keeps of a run."""
    return {"validated_on": run.validated_on, "train_losses": run.train_losses,
            "test_losses": run.test_losses, "accuracies": run.accuracies, "seconds": run.seconds}


def save_run(name, run, dropout, out_dir):
    """Write NAME_history.json, NAME.pt (the last epoch), NAME_best.pt (lowest validation loss)."""
    if not run.epochs:
        print("No epoch was completed: nothing to save.")
        return
    out_dir = Path(out_dir)
    files = {f"{name}_history.json": lambda path: write_json(path, history(run)),
             f"{name}.pt": lambda path: save_checkpoint(path, run.weights[run.epochs], dropout,
                                                        metrics(run, run.epochs)),
             f"{name}_best.pt": lambda path: save_checkpoint(path, run.weights[run.best_epoch],
                                                             dropout, metrics(run, run.best_epoch))}
    for n, (filename, write) in enumerate(files.items()):
        try:
            write(out_dir / filename)
        except WriteError as e:
            fail(f"{e}: not saved: {', '.join(list(files)[n:])}; the files before them are "
                 f"complete. {e.fix} or pass another --out-dir, and train again.", 1)
    print(f"Saved {run.epochs} epoch{'s' * (run.epochs > 1)} to {out_dir}: {name}_history.json, "
          f"{name}.pt (epoch {run.epochs}), {name}_best.pt (epoch {run.best_epoch})")


def read_history(path):
    """A history written by save_run, as a dict of common.Run's fields; BadFile saying why when the
    file cannot be one."""
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
    highest = {"train_losses": LARGEST_LOSS, "test_losses": LARGEST_LOSS, "accuracies": 1,
               "seconds": 1e6}
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= highest[k]
               for k in keys for x in h[k]):
        raise BadFile(f"{path} holds something else than losses, accuracies and seconds")
    if not h["test_losses"] or len({len(h[k]) for k in keys}) != 1:
        raise BadFile(f"{path} holds no epoch, or lists of different lengths")
    return {"validated_on": h["validated_on"], **{k: [float(x) for x in h[k]] for k in keys}}


# ------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, state_dict, dropout, metrics):
    """A dict that rebuilds the network alone: weights, dropout, class names, epoch and metrics."""
    checkpoint = {"state_dict": state_dict, "dropout": dropout,
                  "classes": list(datasets.FashionMNIST.classes), "epoch": metrics["epoch"],
                  "metrics": metrics}
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, network, device):
    """Rebuild the network from a checkpoint file alone, in eval mode (step 4); one sentence on
    any problem."""
    try:
        return read_checkpoint(path, network, device)
    except BadFile as e:
        fail(str(e))


def read_checkpoint(path, network, device):
    """The network of a checkpoint, a `network` (common.FashionNeuralNetwork) in eval mode, and the
    checkpoint; BadFile unless it would give numbers: the network's shape, finite weights, a
    dropout in [0, 1) and a whole epoch."""
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
        model = network(dropout=dropout)
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



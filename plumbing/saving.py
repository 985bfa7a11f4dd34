"""Safe writes, histories and checkpoints.

Keeps safe: every file a script writes. A script's files are written under temporary names and
renamed into place as one set, so a crash, a kill or a full disk leaves the old set or the new
one, never half of one; what is read back (a history, a checkpoint) is checked before it is used.
"""
import errno
import json
import os
import pickle
import re
import signal
import tempfile
import threading
import uuid
import zipfile
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path

import torch
from torchvision import datasets

try:
    import fcntl                                # flock: Linux and macOS, not Windows
except ImportError:
    fcntl = None

from plumbing.errors import BadFile, WriteError, behind, fail


# ------------------------------------------------------------------------------------ safe writes

@contextmanager
def locked(folder):
    """The scripts' lock on `folder` (flock, where the system has it): two runs writing there write
    their sets one after the other. A killed writer's temporary files found there are removed."""
    if fcntl is None:                                     # Windows: no lock between processes
        yield
        return
    with open(Path(folder) / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                  # released when the file is closed
        for stale in Path(folder).glob(".*.tmp"):
            if TEMPORARY.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        yield


def write_set(writers):
    """Write files ({path: write(f)}) into one folder as one set: each under a temporary name, then
    all renamed into place, stops held off for the renames, the folder locked throughout. A
    WriteError or a KeyboardInterrupt says in its .outcome which files are this run's."""
    paths = [Path(path) for path in writers]
    if not paths:
        return
    names = ", ".join(path.name for path in paths)
    kept = (f"not saved: {names}; those of them in {paths[0].parent} are all as they were, "
            "from an earlier run" if len(paths) > 1 else "the file was left as it was")
    temporary = [temporary_name(path) for path in paths]
    try:
        with _write_errors(paths[0], kept), locked(paths[0].parent):
            for path in paths:
                if path.is_dir():          # found now, before any file of the set is replaced
                    error = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                    raise WriteError(path, error, kept)
            try:
                for path, tmp, write in zip(paths, temporary, writers.values()):
                    with _write_errors(path, kept), open(tmp, "xb") as f:
                        write(f)
                        f.flush()
                        os.fsync(f.fileno())
            except KeyboardInterrupt as stop:
                stop.outcome = kept
                raise
            with _signals_held():
                for n, (path, tmp) in enumerate(zip(paths, temporary)):
                    # the files before the n-th are new, the rest not
                    half = (f"saved: {', '.join(p.name for p in paths[:n])}; not saved: "
                            f"{', '.join(p.name for p in paths[n:])}, so those of them in "
                            f"{paths[0].parent} are an earlier run's (stale)")
                    with _write_errors(path, half if n else kept):
                        os.replace(tmp, path)
    finally:
        for tmp in temporary:
            with suppress(OSError):     # a failed cleanup never hides the failure that caused it
                tmp.unlink(missing_ok=True)


def temporary_name(path):
    """A name beside `path` used by no other writer, even one on another host sharing the folder."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}.tmp")


TEMPORARY = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")      # the names temporary_name() gives
LOCK = ".write.lock"


@contextmanager
def _write_errors(path, outcome):
    """Any failure to write `path` as a WriteError that names its cause; a Ctrl-C or a signal that
    torch.save wrapped in a RuntimeError as the stop it is."""
    try:
        yield
    except (OSError, RuntimeError, pickle.PicklingError) as e:
        stop = behind(e, KeyboardInterrupt)
        if stop:
            raise stop
        raise WriteError(path, e, outcome) from e


@contextmanager
def _signals_held():
    """Ctrl-C, SIGTERM and SIGHUP held off while the block runs, then raised as they would have
    been: a set is renamed into place whole. Only the main thread handles signals."""
    # Not signal.pthread_sigmask: it holds them off one thread only, and torch's threads take them.
    caught, held = [], {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None and callable(signal.getsignal(sig)):
                held[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
    if caught:
        held[caught[0]](caught[0], None)      # raises the stop: KeyboardInterrupt or Terminated


def json_bytes(obj):
    return (json.dumps(obj, indent=1) + "\n").encode()


def write_figure(fig, f):
    fig.savefig(f, format="png", dpi=110)


def save_figures(figures):
    """Pictures ({path: Figure}) written as one set, each a PNG."""
    write_set({path: partial(write_figure, fig) for path, fig in figures.items()})


def prepare_out_dir(out_dir):
    """Make the output folder and prove it writable before any training time is spent."""
    out_dir = Path(out_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except FileExistsError:             # a file, or a link to nothing (or to a loop of links)
        fail(f"{out_dir} is a file or a link, not a folder: remove it or pass another --out-dir.")
    except OSError as e:
        fail(f"cannot write to {out_dir} ({e.strerror}): pass a folder you can write to with "
             "--out-dir.")
    return out_dir


# -------------------------------------------------------------------------------- a run's history

def keep_weights(weights, model, epoch, earlier_losses):
    """common.train()'s weights (epoch -> state_dict) with a copy of `epoch`'s added; besides, only
    the epoch before and the best one before it are kept, which a Ctrl-C may still need."""
    best = 0                                  # the best epoch before this one; 0: none yet
    if earlier_losses:
        best = 1 + earlier_losses.index(min(earlier_losses))
    weights = {e: w for e, w in weights.items() if e in (epoch - 1, best)}
    weights[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights


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


def save_run(name, run, dropout, out_dir, plot=None):
    """Write NAME_history.json, NAME.pt (the last epoch), NAME_best.pt (lowest validation loss) and
    the figure `plot` as NAME_loss.png, as one set; a WriteError says what became of them."""
    if not run.epochs:
        print("No epoch was completed: nothing to save.")
        return
    out_dir = Path(out_dir)
    last, best = run.epochs, run.best_epoch
    files = {f"{name}_history.json": lambda f: f.write(json_bytes(history(run))),
             f"{name}.pt": lambda f: torch.save(checkpoint(run.weights[last], dropout,
                                                           metrics(run, last)), f),
             f"{name}_best.pt": lambda f: torch.save(checkpoint(run.weights[best], dropout,
                                                                metrics(run, best)), f)}
    if plot is not None:
        files[f"{name}_loss.png"] = partial(write_figure, plot)
    write_set({out_dir / filename: write for filename, write in files.items()})
    print(f"Saved {last} epoch{'s' * (last != 1)} to {out_dir}: {name}_history.json, {name}.pt "
          f"(epoch {last}), {name}_best.pt (epoch {best}){f', {name}_loss.png' * bool(plot)}")


def read_history(path):
    """A history written by save_run, as a dict of common.Run's fields; BadFile if it is not one."""
    path = Path(path)
    h = None
    # Not a folder or a pipe (reading one waits for a writer); a history of 30 epochs takes 2 KB
    if path.is_file() and path.stat().st_size <= 2 ** 20:
        with suppress(OSError, ValueError, RecursionError):     # unreadable, not JSON, too deep
            h = json.loads(path.read_bytes())
    # Each list, with the largest value it may hold: no loss per image of these scripts is near
    # 1000 (an untrained network's is 2.3).
    lists = {"train_losses": 1000.0, "test_losses": 1000.0, "accuracies": 1, "seconds": 1e6}
    if not (isinstance(h, dict) and h.get("validated_on") in ("test", "validation")
            and all(isinstance(h.get(k), list) for k in lists)
            and h["test_losses"] and len({len(h[k]) for k in lists}) == 1
            and all(type(x) in (int, float) and 0 <= x <= most       # a bool is not a number
                    for k, most in lists.items() for x in h[k])):
        raise BadFile(f"{path} is missing, cannot be read or is not a history these scripts "
                      "write, with a loss, an accuracy and seconds for each epoch")
    return {"validated_on": h["validated_on"], **{k: [float(x) for x in h[k]] for k in lists}}


# ------------------------------------------------------------------------------------- checkpoints

def checkpoint(state_dict, dropout, metrics):
    """A dict that rebuilds the network alone: weights, dropout, class names, epoch and metrics."""
    return {"state_dict": state_dict, "dropout": dropout,
            "classes": list(datasets.FashionMNIST.classes), "epoch": metrics["epoch"],
            "metrics": metrics}


def load_checkpoint(path, network, device):
    """Rebuild `network` from a checkpoint file alone, in eval mode (step 4): (model, checkpoint).
    A state_dict saved elsewhere gives dropout and epoch None. BadFile unless it gives numbers."""
    path = Path(path).expanduser()
    another = "pass another --checkpoint"
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
                      f"network holds about 1 MB: {another}.")
    unusable = BadFile(f"{path} is empty, truncated, broken or not a checkpoint of these scripts, "
                       f"nor a state_dict of weights: {another}.")
    try:
        # A checkpoint is a pickle: weights_only=True refuses to run any code stored in one.
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        # what weights_only refuses to unpickle (a class, a function) it names as a GLOBAL
        if not (isinstance(e, pickle.UnpicklingError) and "GLOBAL " in str(e)):
            raise unusable from None
        raise BadFile(f"{path} holds a pickled Python object, not only weights (a whole model, if "
                      "torch.save(model) saved it), which could run any code when loaded, so the "
                      "scripts load only weights: save those in the notebook with torch.save("
                      "model.state_dict(), 'checkpoint.pth') and pass that file.") from None
    found = _state_dict_in(checkpoint)
    ours = isinstance(checkpoint, dict) and {"state_dict", "dropout", "epoch"} <= checkpoint.keys()
    if not ours:
        checkpoint = {"dropout": None, "epoch": None}        # a state_dict saved elsewhere
    dropout, epoch = checkpoint["dropout"], checkpoint["epoch"]
    # a record of these scripts whose dropout or epoch is not a number in range (a bool is none)
    broken = ours and not (type(dropout) in (int, float) and 0 <= dropout < 1
                           and type(epoch) is int and epoch >= 0)
    if found is None or broken:
        raise unusable
    checkpoint = dict(checkpoint, state_dict=found[0], wrapper=found[1])
    state = checkpoint["state_dict"]
    try:
        model = network(dropout=dropout or 0.0)          # dropout acts in train mode only
        model.load_state_dict(state)                     # the same names, of the same shapes
    except Exception:
        raise BadFile(f"{path} holds the weights of another network: its state_dict has "
                      f"{_shapes(state)}, where the tutorial's 784-256-128-64-10 network has "
                      f"{_shapes(network().state_dict())}: pass a state_dict of that network, or "
                      "another --checkpoint.") from None
    with torch.no_grad():                # and they give numbers: for black, grey and white images
        probe = model.eval()(torch.tensor([-1.0, 0.0, 1.0]).view(3, 1).expand(3, 784))
    if not (all(torch.isfinite(w).all() for w in state.values()) and torch.isfinite(probe).all()):
        raise BadFile(f"{path} holds weights that are not numbers (NaN or infinite, or so large "
                      "that the network's answers are not), as a training that blew up leaves: "
                      f"train again, or {another}.")
    return model.to(device).eval(), checkpoint


# What torch.compile (_orig_mod.) and DataParallel (module.) put before each weight's name
WRAPPERS = {"_orig_mod.": "torch.compile", "module.": "DataParallel"}


def _state_dict_in(obj):
    """The state_dict that `obj` is, or holds as Udacity's Part 6 saves one, with a wrapper's
    prefix taken off its names, and that wrapper (None if none); None when it holds none."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and
                                                  isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        return None
    for prefix, wrapper in WRAPPERS.items():
        if all(k.startswith(prefix) for k in obj):
            return {k[len(prefix):]: v for k, v in obj.items()}, wrapper
    return obj, None


def _shapes(state_dict, most=8):
    """A state_dict's first `most` names, each with its shape: layer_input.weight [256, 784], …"""
    names = [f"{name} {list(weights.shape)}" for name, weights in state_dict.items()]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"{', '.join(names[:most])}{more}"

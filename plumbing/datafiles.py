"""Finding, checking and unpacking the four Fashion-MNIST files torchvision reads.

Keeps safe: what the network is trained on. The files come from the raw folder, a local copy
($FASHION_MNIST_DIR or Debian's dataset-fashion-mnist) or torchvision's download, in that order;
each is checked against its IDX header, Fashion-MNIST's size and the SHA-256 of the data set's own
file before it is used, so a broken copy, another data set's files or the other split's are named
or fetched again, never trained on, and nothing larger than the data set is ever unpacked. What
torchvision then makes of them is checked too.
"""
import gzip
import hashlib
import math
import os
import socket
import zlib
from contextlib import contextmanager
from pathlib import Path

import torch
from torchvision import datasets

from plumbing.cli import DEFAULT_DATA_DIR
from plumbing.errors import WriteError, fail
from plumbing.saving import atomic_write

SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")       # Debian's dataset-fashion-mnist
# The four IDX files torchvision reads from ROOT/FashionMNIST/raw/: their IDX magic number (0x0803
# = unsigned bytes in 3 dimensions, 0x0801 in 1) and Fashion-MNIST's own count, which no file may
# exceed: a damaged header cannot make the scripts unpack or allocate more than the data set.
RAW_FILES = {"train-images-idx3-ubyte": (0x0803, 60000), "train-labels-idx1-ubyte": (0x0801, 60000),
             "t10k-images-idx3-ubyte": (0x0803, 10000), "t10k-labels-idx1-ubyte": (0x0801, 10000)}
N_CLASSES = len(datasets.FashionMNIST.classes)
# The SHA-256 of each file, unpacked: the same for torchvision's download and for Debian's package
# (whose .gz files differ from torchvision's, but unpack to these bytes). A full-size file must be
# one of these: another data set's files under these names, or the other split's, are not.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Files with fewer items than Fashion-MNIST's have no digest to match: they are used only where
# this variable is 1, as the test suite sets it for its tiny data set (docs/testing.md).
SUBSET_VARIABLE = "FASHION_MNIST_SUBSET"
DOWNLOAD_TIMEOUT = 30           # seconds without an answer before the download gives up


def ensure_raw_files(data_dir, download=True):
    """Make sure DATA_DIR/FashionMNIST/raw/ holds the four sound IDX files; return DATA_DIR, the
    root that torchvision's datasets.FashionMNIST reads them from.

    Missing or damaged files come from, in order: .gz files already in the raw folder, a local
    copy ($FASHION_MNIST_DIR or Debian's dataset-fashion-mnist), torchvision's download.
    """
    if Path(data_dir).expanduser().is_file():
        fail(f"--data-dir {data_dir} is a file, not a folder: pass the folder that holds, or is "
             "to hold, FashionMNIST/raw/.")
    root = data_root(data_dir)
    raw = root / "FashionMNIST" / "raw"
    needed = {name: problem for name in RAW_FILES if (problem := idx_problem(raw / name))}
    if not needed:
        return root
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {raw} ({e.strerror}): pass a folder you can write to with --data-dir.")
    for name, problem in list(needed.items()):
        if problem != "missing":
            print(f"{_file_and(raw / name, problem)}; fetching it again.")
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
                fail(f"{_file_and(source, bad)}: delete it and run again to fetch a fresh copy.")
            fix = ("replace that file" if os.environ.get("FASHION_MNIST_DIR")
                   else "reinstall dataset-fashion-mnist")
            fail(f"the local copy {_file_and(source, bad)}: {fix}.")
    why = "--no-download was given"
    if needed and download:
        for name in needed:
            (raw / name).unlink(missing_ok=True)
        try:
            with _timeout(DOWNLOAD_TIMEOUT):
                datasets.FashionMNIST(root, download=True)
        except Exception as e:      # any failure means "no download"; its last line says why
            why = _why_not_downloaded(e)
        needed = {name: problem for name in needed if (problem := idx_problem(raw / name))}
        for name in needed:         # what a failed download left half-written
            (raw / f"{name}.gz").unlink(missing_ok=True)
    if needed:
        name = next(iter(needed))
        if needed[name] != "missing":
            fail(f"{_file_and(raw / name, needed[name])}: delete it and run again to fetch a "
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
    return root


def data_root(data_dir):
    """The torchvision root that --data-dir names: the folder itself, or, for the data set's own
    FashionMNIST or FashionMNIST/raw folder, the folder above it. No folder is made in the data."""
    folder = Path(data_dir).expanduser()
    if folder.name == "raw" and folder.parent.name == "FashionMNIST":
        root = folder.parent.parent
    elif folder.name == "FashionMNIST":
        root = folder.parent
    elif any((folder / f"{name}{gz}").is_file() for name in RAW_FILES for gz in ("", ".gz")):
        fail(f"--data-dir {data_dir} holds Fashion-MNIST's files itself, where the scripts need "
             "the folder above FashionMNIST/raw/ and make no folder inside yours: use these files "
             f"as a local copy, with FASHION_MNIST_DIR={folder} and no --data-dir (they are "
             f"checked and unpacked into {DEFAULT_DATA_DIR}FashionMNIST/raw/).")
    else:
        return folder
    print(f"Reading {folder} as the data set's {folder.name} folder: --data-dir {root}")
    return root


@contextmanager
def _timeout(seconds):
    """Sockets opened inside give up after `seconds` without an answer: torchvision sets none."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _why_not_downloaded(e):
    """The download's own reason, its exception's last line, with what to do where it is known."""
    why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    if "timed out" in why:
        why += f": the server did not answer within {DOWNLOAD_TIMEOUT} s; try again later"
    elif "CERTIFICATE_VERIFY_FAILED" in why:
        why += ("; Python cannot check the server's certificate: on macOS, run \"Install "
                "Certificates.command\" in the Python folder of Applications (python.org's "
                "installer), elsewhere pip install certifi and set SSL_CERT_FILE to the path that "
                "python -m certifi prints")
    return why


def _fix(root):
    """What to do when torchvision cannot make Fashion-MNIST of the files under `root`."""
    # torchvision reads FashionMNIST/processed/ instead of raw/ when an old version left it there.
    processed = root / "FashionMNIST" / "processed"
    if all((processed / name).is_file() for name in ("training.pt", "test.pt")):
        return f"delete {processed}, which an older torchvision wrote, and run again"
    # raw files that passed idx_problem can only fail as a mismatched pair
    return (f"its image and label files are not a pair; put a matching pair in "
            f"{root / 'FashionMNIST' / 'raw'}, or where they were copied from, and run again")


@contextmanager
def reading(root):
    """Around torchvision's datasets.FashionMNIST(root, ...): any error it raises, one sentence."""
    try:
        yield
    except Exception as e:
        fail(f"torchvision cannot read Fashion-MNIST in {root} ({type(e).__name__}): "
             f"{_fix(root)}.")


def check_split(split, root):
    """Refuse, in one sentence, a torchvision split that does not hold what the raw files were
    checked to hold: 28x28 uint8 images, as many labels, each from 0 to 9."""
    images, labels = split.data, split.targets
    name = "train" if split.train else "t10k"
    most = RAW_FILES[f"{name}-labels-idx1-ubyte"][1]
    # Exactly what torchvision makes of the raw files: uint8 images (N, 28, 28) and int64 labels
    # (N,), whole tensors in memory, at most Fashion-MNIST's count.
    if not all(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.layout == torch.strided
               and t.is_contiguous() for t in (images, labels)) \
            or images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1:] != (28, 28) \
            or labels.dtype != torch.int64 or labels.dim() != 1 or len(images) > most:
        fail(f"the {name} split in {root} is not Fashion-MNIST's 28x28 images with labels: "
             f"{_fix(root)}.")
    if len(images) != len(labels):
        fail(f"the {name} split holds {len(images)} images but {len(labels)} labels: {_fix(root)}.")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= N_CLASSES:
        fail(f"the {name} split holds no images, or a label outside 0 to 9: {_fix(root)}.")
    processed, raw = root / "FashionMNIST" / "processed", root / "FashionMNIST" / "raw"
    if all((processed / n).is_file() for n in ("training.pt", "test.pt")):   # read, not raw/
        if images.numpy().tobytes() != (raw / f"{name}-images-idx3-ubyte").read_bytes()[16:] \
                or labels.to(torch.uint8).numpy().tobytes() != \
                (raw / f"{name}-labels-idx1-ubyte").read_bytes()[8:]:
            fail(f"the {name} split that torchvision read from {processed} is not what the files "
                 f"in {raw} hold: delete {processed}, which an older torchvision wrote, and run "
                 "again.")


def local_copies():
    """Folders that may hold a local copy of the four files: $FASHION_MNIST_DIR, else Debian's."""
    env = os.environ.get("FASHION_MNIST_DIR")
    return [Path(env).expanduser()] if env else [SYSTEM_COPY]


def idx_problem(path, name=None):
    """Why an IDX file of Fashion-MNIST (named `name`, by default its own name) is unusable, or
    None when sound: a full-size file must be the data set's own (its SHA-256); another, its
    header, its size, its labels from 0 to 9, and fewer items only where SUBSET_VARIABLE allows."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    name = name or path.name
    held = _which_file(path)
    if held == name:
        return None
    if held:
        return f"holds Fashion-MNIST's {_what(held)}, not its {_what(name)}"
    with open(path, "rb") as f:
        header = f.read(4 + 4 * (RAW_FILES[name][0] & 0xFF))
        problem = _header_problem(header, name)
        if problem:
            return problem
        size, expected = path.stat().st_size, _idx_size(header, name)
        if size != expected:
            return f"{size} bytes where its header promises {expected}"
        if name.endswith("labels-idx1-ubyte") and max(f.read()) >= N_CLASSES:
            return "it holds a label above 9"
    count, full = int.from_bytes(header[4:8], "big"), RAW_FILES[name][1]
    if count == full:
        return (f"holds {count} {_what(name).split()[-1]} that are not Fashion-MNIST's own "
                f"{_what(name)} (another data set's, such as MNIST's digits, or altered ones: "
                "their SHA-256 is not the data set's)")
    if os.environ.get(SUBSET_VARIABLE) != "1":
        return f"holds only {count} of the {full} {_what(name)} of Fashion-MNIST"
    return None


def _which_file(path):
    """The name of the Fashion-MNIST file whose contents `path` holds, byte for byte, or None.
    Only a file of one of their sizes is read and hashed."""
    if path.stat().st_size not in {_full_size(name) for name in RAW_FILES}:
        return None
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2 ** 20):
            sha256.update(block)
    return next((name for name, digest in SHA256.items() if digest == sha256.hexdigest()), None)


def _full_size(name):
    """The size in bytes of Fashion-MNIST's own file `name`."""
    magic, count = RAW_FILES[name]
    return 4 + 4 * (magic & 0xFF) + count * (784 if magic & 0xFF == 3 else 1)


def _what(name):
    """What file `name` holds, in words: "training images", "test labels"."""
    split, kind = name.split("-")[:2]
    return f"{'training' if split == 'train' else 'test'} {kind}"


def _file_and(path, problem):
    """A file and its problem, as a sentence's start: "PATH is damaged (why)", or, for a whole
    file that is not the one named, "PATH holds ..."."""
    return f"{path} {problem}" if problem.startswith("holds ") else f"{path} is damaged ({problem})"


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
    limit = _full_size(target.name)
    # No more than the data set's largest file of this kind: the other split's is recognised.
    kind = RAW_FILES[target.name][0]
    most = max(_full_size(name) for name, (magic, _) in RAW_FILES.items() if magic == kind)
    try:
        with (gzip.open if source.suffix == ".gz" else open)(source, "rb") as src:
            data = src.read(most + 1)
    except (OSError, EOFError, zlib.error) as e:
        return f"cannot be unpacked: {e}"
    if len(data) > most:
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



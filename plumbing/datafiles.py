"""Finding, checking and unpacking the four Fashion-MNIST files torchvision reads.

Keeps safe: what the network is trained on. Each file, from the raw folder, a local copy or the
download, must have the SHA-256 of the data set's own; nothing larger than it is ever unpacked.
"""
import gzip
import hashlib
import os
import socket
import zlib
from pathlib import Path

from torchvision import datasets

from plumbing.cli import DEFAULT_DATA_DIR
from plumbing.errors import WriteError, fail
from plumbing.saving import write_set

SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")       # Debian's dataset-fashion-mnist
# The four IDX files torchvision reads from ROOT/FashionMNIST/raw/, and their size in bytes
RAW_FILES = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
             "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}
# Each file's SHA-256, unpacked: the same for torchvision's download and Debian's package
FILE_WITH_SHA256 = {
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888": "train-images-idx3-ubyte",
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9": "train-labels-idx1-ubyte",
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b": "t10k-images-idx3-ubyte",
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34": "t10k-labels-idx1-ubyte",
}
# A file smaller than the data set's has no digest to match: it is taken, unchecked, only where
# this variable is 1, as the test suite sets it for its tiny data set (docs/testing.md).
SUBSET_VARIABLE = "FASHION_MNIST_SUBSET"
DOWNLOAD_TIMEOUT = 30           # seconds without an answer before the download gives up


def ensure_raw_files(data_dir, download=True):
    """Put the four sound files in DATA_DIR/FashionMNIST/raw/; return the root torchvision reads."""
    root = data_root(data_dir)
    processed = root / "FashionMNIST" / "processed"
    if all((processed / name).is_file() for name in ("training.pt", "test.pt")):
        fail(f"an older torchvision left {processed}, which today's reads instead of the checked "
             "files in raw/: delete it and run again.")
    raw = root / "FashionMNIST" / "raw"
    needed = {name: problem for name in RAW_FILES if (problem := idx_problem(raw / name))}
    if not needed:
        return root
    raw.mkdir(parents=True, exist_ok=True)      # if it cannot be, cli.run_script names the path
    env = os.environ.get("FASHION_MNIST_DIR")
    copy = Path(env).expanduser() if env else SYSTEM_COPY       # the local copy
    for name, problem in list(needed.items()):
        if problem != "missing":
            print(f"{raw / name} {problem}; fetching it again.")
        sources = (raw / f"{name}.gz", copy / f"{name}.gz", copy / name)
        source = next((p for p in sources if p.is_file() and p != raw / name), None)
        if source is None:
            continue
        bad = _unpack(source, raw / name)
        if bad and source.parent == raw:
            fail(f"{source} {bad}: delete it and run again to fetch a fresh copy.")
        if bad:
            fix = "replace that file" if env else "reinstall dataset-fashion-mnist"
            fail(f"the local copy {source} {bad}: {fix}.")
        print(f"Unpacked {source} -> {raw / name}")
        del needed[name]
    why = "--no-download was given"
    if needed and download:
        for name in needed:
            (raw / name).unlink(missing_ok=True)
        before = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)      # torchvision sets none: it would wait
        try:
            datasets.FashionMNIST(root, download=True)
        except Exception as e:      # any failure means "no download"; its last line says why
            why = _why_not_downloaded(e)
        finally:
            socket.setdefaulttimeout(before)
        needed = {name: problem for name in needed if (problem := idx_problem(raw / name))}
        for name in needed:         # what a failed download left half-written
            (raw / f"{name}.gz").unlink(missing_ok=True)
    if needed:
        name = next(iter(needed))
        if needed[name] != "missing":
            fail(f"{raw / name} {needed[name]}: delete it and run again to fetch a fresh copy.")
        lacks = f"lacks {name}.gz" if copy.is_dir() else "is not a folder"
        named = f" (it names {env}, which {lacks})" if env else ""
        fail(f"Fashion-MNIST is not in {raw} and could not be downloaded: connect to the internet, "
             f"or install Debian's package (apt-get install dataset-fashion-mnist), or put the "
             f"four *-ubyte.gz files in {raw} or in a folder named by FASHION_MNIST_DIR{named}."
             f"\nThe download failed: {why}")
    return root


def data_root(data_dir):
    """The root --data-dir names: torchvision's, the folder above FashionMNIST/raw/. One that holds
    the data set's files, itself or in its raw/, is refused, and nothing is made inside it."""
    folder = Path(data_dir).expanduser()
    for files in (folder, folder / "raw"):
        if any((files / f"{name}{gz}").is_file() for name in RAW_FILES for gz in ("", ".gz")):
            fail(f"--data-dir {data_dir} holds Fashion-MNIST's files, where the scripts need the "
                 f"folder above FashionMNIST/raw/ (the default is {DEFAULT_DATA_DIR}): pass that "
                 f"folder, or leave out --data-dir and set FASHION_MNIST_DIR={files} to use these "
                 "files as a local copy.")
    return folder


def _why_not_downloaded(e):
    """The download's own reason, its exception's last line, with what to do where it is known."""
    why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    if "CERTIFICATE_VERIFY_FAILED" in why:
        why += ("; Python cannot check the server's certificate: on macOS, run \"Install "
                "Certificates.command\" in Applications/Python 3.x, elsewhere pip install certifi "
                "and set SSL_CERT_FILE to the path that python -m certifi prints")
    return why


def idx_problem(path):
    """Why the raw file `path` is not Fashion-MNIST's file of its name ("missing", ...), or None."""
    if not path.is_file():
        return "missing"
    return _data_problem(_read(path, path.name), path.name)


def _data_problem(data, name):
    """Why the bytes `data` are not Fashion-MNIST's file `name`, as idx_problem says it, or None."""
    held = FILE_WITH_SHA256.get(hashlib.sha256(data).hexdigest())
    if held == name:
        return None
    if held:
        return f"holds Fashion-MNIST's {_what(held)}, not its {_what(name)}"
    if os.environ.get(SUBSET_VARIABLE) == "1" and len(data) < RAW_FILES[name]:
        return None
    return (f"is not Fashion-MNIST's {_what(name)} (damaged, cut short, or another data set's: "
            "its SHA-256 differs)")


def _what(name):
    """What file `name` holds, in words: "training images", "test labels"."""
    split, kind = name.split("-")[:2]
    return f"{'training' if split == 'train' else 'test'} {kind}"


def _read(path, name):
    """The bytes of `path`, gunzipped if .gz, cut one byte past the larger file of `name`'s kind."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        return f.read(RAW_FILES[name.replace("t10k", "train")] + 1)


def _unpack(source, target):
    """Copy (or gunzip) one file into place if it is sound; return why not, or None."""
    try:
        data = _read(source, target.name)
    except (OSError, EOFError, zlib.error) as e:
        return f"cannot be unpacked ({e})"
    problem = _data_problem(data, target.name)
    if problem is None:
        try:
            write_set({target: lambda f: f.write(data)})
        except WriteError as e:
            fail(f"{e}: {e.fix.lower()} or pass another --data-dir.")
    return problem

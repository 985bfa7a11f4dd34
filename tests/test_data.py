"""Guards the data files: the four IDX files found, unpacked and checked, each damage or foreign
file refused in one sentence that names it, and the real data set where it is installed."""
import contextlib
import gzip
import hashlib
import io
import json
import os
import tracemalloc
import unittest
import zlib
from unittest import mock

import torch
from PIL import Image

import common
from common import FashionNeuralNetwork
from plumbing import datafiles, saving
from tests.tiny import (N_TEST, N_TRAIN, REAL_DATA, ChildRuns, ForkedRun, TinyDataTestCase,
                        baseline, data_step, idx_bytes, leftovers, prepared_photo, run_main,
                        write_fake_fashion_mnist)


def as_if_full_size(test):
    """The tiny data set taken for the whole one: its sizes and digests in the tables."""
    digests, sizes = {}, {}
    for name in datafiles.RAW_FILES:
        data = gzip.decompress((test.source / f"{name}.gz").read_bytes())
        digests[hashlib.sha256(data).hexdigest()] = name
        sizes[name] = len(data)
    for patch in (mock.patch.dict(datafiles.FILE_WITH_SHA256, digests),
                  mock.patch.dict(datafiles.RAW_FILES, sizes),
                  mock.patch.dict(os.environ, {datafiles.SUBSET_VARIABLE: "0"})):
        patch.start()
        test.addCleanup(patch.stop)


class DataFileTests(TinyDataTestCase):
    """A local copy unpacked, gzipped or not; without one and without a download, three ways out."""

    def test_local_copy_is_unpacked_into_the_raw_folder(self):
        self.load()
        raw = self.data_dir / "FashionMNIST" / "raw"
        for name in datafiles.RAW_FILES:
            self.assertEqual((raw / name).read_bytes(),
                             gzip.decompress((self.source / f"{name}.gz").read_bytes()))
        self.assertEqual(leftovers(raw), [])

    def test_unpacked_local_copy_is_accepted_too(self):
        plain = self.tmp / "plain-copy"
        write_fake_fashion_mnist(plain, gz=False)
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(plain)}):
            trainloader, testloader = self.load()
        self.assertEqual((len(trainloader.dataset), len(testloader.dataset)), (N_TRAIN, N_TEST))

    def test_no_data_and_no_download_stops_with_the_three_ways_out(self):
        empty = self.tmp / "empty"
        empty.mkdir()
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(empty)}):
            status, out, err = run_main(data_step, *self.paths())
        self.assertEqual(status, 2)
        self.assertIn("internet", err)
        self.assertIn("apt-get install dataset-fashion-mnist", err)
        self.assertIn("FASHION_MNIST_DIR", err)
        self.assertEqual(err.splitlines()[1:], ["The download failed: --no-download was given"],
                         "no traceback")

    def test_a_data_dir_whose_raw_folder_cannot_be_made_is_one_sentence(self):
        (self.tmp / "a-file").write_text("")
        folders = {"a file in the way": self.tmp / "a-file" / "data", "a file": self.tmp / "a-file"}
        if os.geteuid() != 0:                           # root writes into a read-only folder
            locked = self.tmp / "locked"
            locked.mkdir(mode=0o555)
            folders["a read-only folder"] = locked / "data"
        for case, folder in folders.items():
            with self.subTest(case):
                err = self.assert_refused(data_step, ["--data-dir", folder], "cannot use",
                                          "check the path and its permissions, or pass another.")
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn(str(folder), err)


class DamagedDataTests(TinyDataTestCase):
    """A damaged file is unpacked again or named, and nothing is half written; damaged contents
    (counts, a gzip bomb) and a processed/ folder are refused in one sentence."""

    def truncate(self, path):
        path.write_bytes(path.read_bytes()[:1000])

    def local_copy(self, **files):
        """A tiny local copy with some of its files replaced (name without .gz -> IDX bytes)."""
        folder = self.tmp / "copy"
        write_fake_fashion_mnist(folder)
        for name, data in files.items():
            (folder / f"{name.replace('_', '-')}.gz").write_bytes(gzip.compress(data))
        patch = mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(folder)})
        patch.start()
        self.addCleanup(patch.stop)
        return folder

    def test_truncated_raw_file_is_unpacked_again_from_the_local_copy(self):
        as_if_full_size(self)
        self.load()
        self.truncate(self.raw())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            trainloader, _ = common.load_data(self.data_dir, download=False)
        self.assertIn(f"{self.raw()} is not Fashion-MNIST's training images (damaged, cut short, "
                      "or another data set's: its SHA-256 differs); fetching it again",
                      out.getvalue())
        self.assertEqual(len(trainloader.dataset), N_TRAIN)

    def test_truncated_raw_file_without_a_source_names_the_file(self):
        as_if_full_size(self)
        self.load()
        self.truncate(self.raw())
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(self.tmp)}):
            status, out, err = run_main(data_step, *self.paths())
        self.assertEqual(status, 2)
        self.assertIn(str(self.raw()), err)
        self.assertIn("delete it", err)

    def test_corrupt_gz_in_the_local_copy_is_named_and_nothing_is_half_written(self):
        bad = self.tmp / "bad-copy"
        write_fake_fashion_mnist(bad)
        gz = bad / "train-images-idx3-ubyte.gz"
        gz.write_bytes(gz.read_bytes()[:500])             # a truncated gzip stream
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(bad)}):
            status, out, err = run_main(data_step, *self.paths())
        self.assertEqual(status, 2)
        self.assertIn(str(gz), err)
        self.assertFalse(self.raw().exists())
        self.assertEqual(leftovers(self.data_dir), [])

    def test_a_broken_gz_in_the_raw_folder_or_a_truncated_plain_local_copy_is_named(self):
        raw_gz = self.raw().with_name("train-images-idx3-ubyte.gz")
        raw_gz.parent.mkdir(parents=True)
        raw_gz.write_bytes(b"not gzip at all")
        status, out, err = run_main(data_step, *self.paths())
        self.assertEqual(status, 2)
        self.assertIn(f"{raw_gz} cannot be unpacked", err)
        raw_gz.unlink()
        as_if_full_size(self)
        plain = self.tmp / "plain-copy"
        write_fake_fashion_mnist(plain, gz=False)
        self.truncate(plain / "train-images-idx3-ubyte")
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(plain)}):
            status, out, err = run_main(data_step, *self.paths())
        self.assertEqual(status, 2)
        self.assertIn(f"the local copy {plain / 'train-images-idx3-ubyte'} is not Fashion-MNIST's "
                      "training images", err)
        self.assertFalse(self.raw().exists())
        self.assertEqual(leftovers(self.data_dir), [])

    def test_a_file_with_more_items_than_fashion_mnists_is_refused(self):
        # larger than the data set's own file, so never taken as a subset's
        self.local_copy(train_labels_idx1_ubyte=idx_bytes(torch.zeros(70000, dtype=torch.uint8)))
        err = self.assert_refused(data_step, [], "the local copy")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(leftovers(self.tmp), [])

    def test_a_small_file_that_unpacks_to_gigabytes_is_refused_at_the_data_sets_size(self):
        # 300 MB of zeros behind a header for 100 labels: 300 KB packed. Unpacking it all first
        # would cost 300 MB of memory; the unpacking stops one byte past the larger labels file.
        header = idx_bytes(torch.zeros(100, dtype=torch.uint8))[:8]
        packer = zlib.compressobj(wbits=31)
        bomb = packer.compress(header)
        bomb += b"".join(packer.compress(bytes(2 ** 20)) for _ in range(300)) + packer.flush()
        self.assertLess(len(bomb), 2 ** 20)
        copy = self.local_copy()
        (copy / "t10k-labels-idx1-ubyte.gz").write_bytes(bomb)
        tracemalloc.start()
        try:
            self.assert_refused(data_step, [],
                                f"the local copy {copy / 't10k-labels-idx1-ubyte.gz'} is not "
                                "Fashion-MNIST's test labels")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 50 * 2 ** 20)

    def test_a_processed_folder_is_named_with_what_to_delete(self):
        # torchvision reads processed/ instead of the checked raw files: refused before it reads
        self.load()
        processed = self.data_dir / "FashionMNIST" / "processed"
        processed.mkdir()
        images, labels = self.splits["t10k"]
        # damaged, and as an older torchvision wrote them, but the test set
        for write in (lambda path: path.write_bytes(b"not a tensor file"),
                      lambda path: torch.save((images.clone(), labels.long()), path)):
            for name in ("training.pt", "test.pt"):
                write(processed / name)
            with mock.patch.object(datafiles.datasets, "FashionMNIST",
                                   side_effect=AssertionError("read processed/")):
                self.assert_refused(baseline, ["--epochs", 1],
                                    f"an older torchvision left {processed}, which today's reads "
                                    "instead of the checked files in raw/: delete it")


class DataIdentityTests(TinyDataTestCase):
    """The data trained on is Fashion-MNIST itself, and the copy named."""

    def test_another_data_sets_files_under_fashion_mnists_names_are_refused(self):
        # MNIST-like: a digit "1" (a bright vertical stroke) on black, at Fashion-MNIST's full size.
        mnist = self.tmp / "mnist"
        mnist.mkdir()
        for split, n in (("train", 60000), ("t10k", 10000)):
            images = torch.zeros(n, 28, 28, dtype=torch.uint8)
            images[:, 4:24, 13:15] = 255
            (mnist / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(images))
            labels = torch.ones(n, dtype=torch.uint8)
            (mnist / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(mnist)}):
            err = self.assert_refused(data_step, [],
                                      f"the local copy {mnist / 'train-images-idx3-ubyte'} is "
                                      "not Fashion-MNIST's training images (damaged, cut short, or "
                                      "another data set's: its SHA-256 differs): replace that "
                                      "file.")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertFalse(self.raw().exists())
        self.assertEqual(leftovers(self.data_dir), [])

    def test_the_other_splits_file_is_named_and_replaced_by_its_own(self):
        as_if_full_size(self)
        self.load()
        # the test set in the training set's place
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            self.raw(f"train-{kind}").write_bytes(self.raw(f"t10k-{kind}").read_bytes())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            trainloader, testloader = common.load_data(self.data_dir, download=False)
        self.assertIn(f"{self.raw()} holds Fashion-MNIST's test images, not its training images; "
                      "fetching it again",
                      out.getvalue())
        # the training set, not the test set
        self.assertEqual(len(trainloader.dataset), N_TRAIN)
        # and with no copy at hand
        with mock.patch.dict(os.environ, {"FASHION_MNIST_DIR": str(self.tmp)}):
            self.raw().write_bytes(self.raw("t10k-images-idx3-ubyte").read_bytes())
            self.assert_refused(data_step, [],
                                f"{self.raw()} holds Fashion-MNIST's test images, not its training "
                                "images: delete it")

    @unittest.skipUnless(REAL_DATA, "the real data set is not installed")
    def test_the_real_test_split_in_the_training_splits_place_is_named_and_replaced(self):
        raw = self.raw().parent
        raw.mkdir(parents=True)
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            raw.joinpath(f"train-{kind}").write_bytes(
                gzip.decompress((datafiles.SYSTEM_COPY / f"t10k-{kind}.gz").read_bytes()))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), mock.patch.dict(os.environ,
                                                              {"FASHION_MNIST_DIR": ""}):
            os.environ.pop("FASHION_MNIST_DIR")
            traindataset, testdataset = common.load_datasets(self.data_dir, download=False)
        self.assertIn("holds Fashion-MNIST's test images, not its training images; fetching it "
                      "again", out.getvalue())
        self.assertEqual((len(traindataset), len(testdataset)), (60000, 10000))

    def test_a_subset_is_used_only_where_the_variable_says_so(self):
        with mock.patch.dict(os.environ, {datafiles.SUBSET_VARIABLE: "0"}):
            self.assert_refused(data_step, [],
                                f"the local copy {self.source / 'train-images-idx3-ubyte.gz'} is "
                                "not Fashion-MNIST's training images", "replace that file")
        status, out, err = run_main(data_step, *self.paths())
        self.assertEqual(status, 0, err)

    def test_every_load_checks_the_digests_and_a_changed_file_is_fetched_again(self):
        as_if_full_size(self)
        with mock.patch.object(datafiles.hashlib, "sha256", wraps=hashlib.sha256) as hashed:
            self.load()
            self.assertEqual(hashed.call_count, 4)           # each file as it is unpacked
            hashed.reset_mock()
            self.load()
            self.assertEqual(hashed.call_count, 4)           # and each again, on every load
            hashed.reset_mock()
            path = self.raw("t10k-labels-idx1-ubyte")
            data = bytearray(path.read_bytes())
            data[-1] = (data[-1] + 1) % 10                   # one label changed, size and all
            path.write_bytes(bytes(data))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                common.load_data(self.data_dir, download=False)
            self.assertEqual(hashed.call_count, 5)           # the four, and the fresh copy
            self.assertIn(f"{path} is not Fashion-MNIST's test labels", out.getvalue())

    def test_a_data_dir_that_holds_the_files_is_refused_and_nothing_is_made_inside_it(self):
        self.load()
        raw = self.raw().parent
        for folder, files in ((raw, raw), (raw.parent, raw), (self.source, self.source)):
            with self.subTest(folder.name):
                before = sorted(folder.rglob("*"))
                self.assert_refused(data_step, ["--data-dir", folder],
                                    f"--data-dir {folder} holds Fashion-MNIST's files",
                                    "the folder above FashionMNIST/raw/",
                                    f"FASHION_MNIST_DIR={files} ")
                self.assertEqual(sorted(folder.rglob("*")), before)     # nothing made inside


def render_as_photo(image, seed):
    """A 28x28 Fashion-MNIST image (uint8, light on black) drawn back as a catalogue photo: a dark
    garment on white, 8 to 14 times larger, off-centre on a larger canvas, as JPEG bytes."""
    g = torch.Generator().manual_seed(seed)
    ranges = ((8, 15), (20, 200), (20, 200), (20, 120), (20, 120))
    scale, right, below, left, top = (torch.randint(a, b, (1,), generator=g).item()
                                      for a, b in ranges)
    garment = Image.frombytes("L", (28, 28), (255 - image).contiguous().numpy().tobytes())
    garment = garment.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    photo = Image.new("RGB", (left + garment.width + right, top + garment.height + below), "white")
    photo.paste(garment.convert("RGB"), (left, top))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@unittest.skipUnless(REAL_DATA, f"the real data set is not installed ({datafiles.SYSTEM_COPY}): "
                                "apt-get install dataset-fashion-mnist")
class RealDataTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        children = ChildRuns()
        cls.addClassCleanup(children.close)
        folder = children.folder / "real"
        folder.mkdir()
        args = ["--data-dir", folder / "data", "--out-dir", folder / "out", "--no-download",
                "--epochs", 1]
        run = children.add(ForkedRun("02_baseline.py", args, folder, {"FASHION_MNIST_DIR": None}))
        children.start()
        cls.status, _, cls.err = run.wait()      # one real epoch of the baseline
        cls.out_dir = folder / "out"
        with contextlib.redirect_stdout(io.StringIO()):
            cls.traindataset, cls.testdataset = common.load_datasets(folder / "data",
                                                                     download=False)

    def test_sizes_and_classes(self):
        self.assertEqual((len(self.traindataset), len(self.testdataset)), (60000, 10000))
        self.assertEqual(torch.bincount(self.traindataset.targets).tolist(), [6000] * 10)
        self.assertEqual(torch.bincount(self.testdataset.targets).tolist(), [1000] * 10)
        self.assertEqual(tuple(self.traindataset.classes), common.CLASSES)

    def test_one_real_epoch_of_the_baseline_passes_80_percent(self):
        self.assertEqual(self.status, 0, self.err)
        history = json.loads((self.out_dir / "baseline_history.json").read_text())
        self.assertGreater(history["accuracies"][0], 0.80)

    def test_photos_of_test_images_get_the_answers_of_the_images(self):
        # Per image, not per accuracy: how often a photo's answer is the image's own does not depend
        # on how well a one-epoch network is trained, which differs from one CPU to another.
        # Measured: 0.94 to 0.95 agreement, correlation 0.93; without the negation 0.03 and -0.93,
        # a garment not trimmed to fill the square 0.15 to 0.35 and 0.41.
        model, _ = saving.load_checkpoint(self.out_dir / "baseline.pt", FashionNeuralNetwork,
                                          torch.device("cpu"))
        images = self.testdataset.data[:300]
        photos = []
        for i, image in enumerate(images):
            path = self.out_dir / "photo.jpg"
            path.write_bytes(render_as_photo(image, seed=i))
            photos.append(prepared_photo(path)[0])
        photos, originals = torch.cat(photos), common.normalize(images)
        with torch.no_grad():
            same = model(photos).argmax(dim=1) == model(originals).argmax(dim=1)
        agreement = same.float().mean()
        self.assertGreater(agreement.item(), 0.85)
        # And without any network: each prepared photo correlates with its image, pixel by pixel.
        a, b = (x.view(len(x), -1) - x.view(len(x), -1).mean(dim=1, keepdim=True)
                for x in (photos, originals))
        correlation = ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-9)).mean()
        self.assertGreater(correlation.item(), 0.85)

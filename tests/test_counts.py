"""The counts the docs quote (tests, mutation entries, pictures, flags, defaults), against the code.

bench/counts.py takes each count from the code and lists the docs' sentences that state one; a
count that changes with the code fails here, naming the page and the sentence to update.
"""
import importlib.util
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_counts():
    """bench/counts.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_counts", ROOT / "bench" / "counts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DocCountTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bench = load_counts()
        cls.found = cls.bench.counts()        # a few seconds: the suite is discovered, not run

    def test_every_count_the_docs_state_is_the_codes(self):
        for page, sentence, numbers in self.bench.quoted():
            with self.subTest(page=page, sentence=sentence):
                self.assertTrue(numbers, f"{page} no longer says {sentence!r}: put the sentence "
                                         "back, or change QUOTED in bench/counts.py with it")
                for name, stated in numbers:
                    self.assertEqual(stated, float(self.found[name]),
                                     f"{page} says {stated:g} in {sentence!r}, the code "
                                     f"{self.found[name]} ({name}): run python bench/counts.py")

    def test_the_counts_come_from_the_code(self):
        self.assertGreaterEqual(self.found["tests"], 2)          # these two at least
        self.assertGreater(self.found["mutants"], 0)
        self.assertGreater(self.found["pictures"], 0)
        for script in self.bench.SCRIPTS:            # --data-dir, --out-dir, --no-download
            self.assertGreaterEqual(self.found[f"flags {script}"], 3, script)

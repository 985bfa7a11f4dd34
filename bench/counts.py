"""The counts and defaults the docs quote, taken from the code, and the sentences that quote them.

    python bench/counts.py

Prints each count (the tests `python -m unittest` finds, the entries of bench/mutants.py, the
pictures of the photo battery, each script's flags, the defaults the docs name), then each
sentence of the docs that quotes one, with what the docs say and what the code says.
tests/test_counts.py checks that the two agree, so a count in the docs cannot go stale in
silence: when the code changes a count, that test names the page and the sentence to update.
Nothing is trained or timed; the tests are found, not run.
"""
import argparse
import importlib.util
import inspect
import re
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("01_data.py", "02_baseline.py", "03_dropout.py", "04_inference.py", "05_beyond.py")

# Each sentence of the docs that states a count: (page, the sentence with {} where a number
# stands, the counts those numbers are). A space matches any run of spaces or line breaks.
QUOTED = [
    ("docs/testing.md", "`python -m unittest` finds {} tests", ["tests"]),
    ("docs/testing.md", "`bench/mutants.py` holds {} changes", ["mutants"]),
    ("docs/testing.md", "a battery of {} generated pictures", ["pictures"]),
    ("docs/testing.md", "| `01_data.py` | {} |", ["flags 01_data.py"]),
    ("docs/testing.md", "| `02_baseline.py` | {} |", ["flags 02_baseline.py"]),
    ("docs/testing.md", "| `03_dropout.py` | {} |", ["flags 03_dropout.py"]),
    ("docs/testing.md", "| `04_inference.py` | {} |", ["flags 04_inference.py"]),
    ("docs/testing.md", "| `05_beyond.py` | {} |", ["flags 05_beyond.py"]),
    ("docs/beyond.md", "`05_beyond.py` takes {} flags", ["flags 05_beyond.py"]),
    ("README.md", "at the scripts' defaults ({} epochs, batch {}, Adam lr {}, dropout {})",
     ["default --epochs", "default --batch-size", "default --lr", "default --dropout"]),
    ("docs/errors.md", "`--batch-size` 1 to {}", ["largest --batch-size"]),
    ("docs/errors.md", "the download gives up after {} s", ["download timeout, seconds"]),
    ("docs/speed.md", "A window is {} steps", ["thread window, steps"]),
    ("docs/speed.md", "as many steps as take {} seconds", ["thread window, seconds"]),
    ("docs/speed.md", "The choice is kept for {} windows", ["thread choice kept, windows"]),
    ("docs/speed.md", "up to {} windows", ["thread choice kept at most, windows"]),
    ("docs/speed.md", "its mean step after {} steps is {} times", ["thread early cut, steps",
                                                                  "thread slower, times"]),
    ("docs/lesson.md", "averaged over {} confidence bins", ["confidence bins"]),
]
NUMBER = r"(\d+(?:\.\d+)?)"


def load(path, name):
    """The module in the file `path` (a numbered script's name is no identifier), as `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def discovered_tests():
    """The tests `python -m unittest` finds at the root (discovered, not run), and the modules
    that could not be imported."""
    suite = unittest.TestLoader().discover(str(ROOT), top_level_dir=str(ROOT))
    broken = [test.id() for test in flatten(suite) if test.id().startswith("unittest.loader.")]
    return suite.countTestCases(), broken


def flatten(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from flatten(test)
        else:
            yield test


def picture_battery():
    """The photo battery's function, wherever the tests keep it: the first module of the test
    suite that defines `picture_battery`."""
    for path in sorted([ROOT / "test_scripts.py", *ROOT.glob("tests/*.py")]):
        module_name = path.stem if path.parent == ROOT else f"tests.{path.stem}"
        if "def picture_battery(" in path.read_text():
            return getattr(importlib.import_module(module_name), "picture_battery")
    raise LookupError("no module of the test suite defines picture_battery()")


class Parsed(Exception):
    """Raised in place of parsing: carries the parser a script built."""


def script_parser(script):
    """The argparse parser `script` builds in main(), caught as it is about to parse."""
    module = load(ROOT / script, "counts_" + Path(script).stem)
    parse_args = argparse.ArgumentParser.parse_args

    def catch(parser, *args, **kwargs):
        raise Parsed(parser)
    argparse.ArgumentParser.parse_args = catch
    try:
        module.main([])
    except Parsed as parsed:
        return module, parsed.args[0]
    finally:
        argparse.ArgumentParser.parse_args = parse_args
    raise LookupError(f"{script}'s main() did not parse its flags")


def flags(parser):
    """The option strings of a parser's flags, --help left out."""
    return [action.option_strings[-1] for action in parser._actions
            if action.option_strings and not isinstance(action, argparse._HelpAction)]


def counts():
    """Every count and default the docs quote, by name."""
    sys.path.insert(0, str(ROOT))
    found = {}
    found["tests"], broken = discovered_tests()
    if broken:
        raise ImportError(f"the test suite has modules that cannot be imported: {broken}")
    found["mutants"] = len(load(ROOT / "bench" / "mutants.py", "counts_mutants").MUTANTS)
    found["pictures"] = len(picture_battery()())
    for script in SCRIPTS:
        module, parser = script_parser(script)
        found[f"flags {script}"] = len(flags(parser))
        if script == "03_dropout.py":
            for action in parser._actions:
                if action.option_strings and not isinstance(action, argparse._HelpAction):
                    found[f"default {action.option_strings[-1]}"] = action.default
            bins = inspect.signature(module.calibration).parameters["bins"]
            found["confidence bins"] = bins.default
    from plumbing import cli, datafiles, speed
    found["largest --batch-size"] = cli.MAX_BATCH_SIZE
    found["download timeout, seconds"] = datafiles.DOWNLOAD_TIMEOUT
    found["thread window, steps"] = speed.WINDOW
    found["thread window, seconds"] = speed.SECONDS
    found["thread choice kept, windows"] = speed.KEEP
    found["thread choice kept at most, windows"] = speed.LONGEST
    found["thread early cut, steps"] = speed.EARLY
    found["thread slower, times"] = speed.SLOWER
    return found


def pattern(sentence):
    """A regular expression for a sentence of QUOTED: {} a number, a space any white space."""
    parts = [r"\s+".join(map(re.escape, part.split(" "))) for part in sentence.split("{}")]
    return NUMBER.join(parts)


def quoted():
    """(page, sentence, [(count name, the number the docs state)]) for each time a sentence of
    QUOTED occurs in its page; a sentence found nowhere is listed with no numbers."""
    results = []
    for page, sentence, names in QUOTED:
        text = (ROOT / page).read_text()
        matches = list(re.finditer(pattern(sentence), text))
        for match in matches:
            results.append((page, sentence, list(zip(names, map(float, match.groups())))))
        if not matches:
            results.append((page, sentence, []))
    return results


def main():
    found = counts()
    print("From the code:")
    for name, value in found.items():
        print(f"  {name:40} {value}")
    print("In the docs:")
    for page, sentence, numbers in quoted():
        if not numbers:
            print(f"  {page}: not found: {sentence!r}")
        for name, stated in numbers:
            verdict = "ok" if stated == float(found[name]) else f"but the code says {found[name]}"
            print(f"  {page}: {name} {stated:g} {verdict}")


if __name__ == "__main__":
    main()

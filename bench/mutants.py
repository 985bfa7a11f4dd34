"""Break the lesson one small change at a time, and check that the test suite notices each change.

    python bench/mutants.py [--list] [--only TEXT ...] [--timeout 600]

Each entry below names a line of the lesson by what it says, inside the function or class that
holds it (a regular expression, searched in that function's source as the ast module finds it),
and the change to make there. So a line that moves with its function is still found, and one that
was rewritten or moved elsewhere is reported as "line not found", never skipped in silence: update
the entry. For each entry, in a temporary copy of the repository, the script makes that one change
and runs `python -m unittest -f` on the test expected to catch it first (only to stop sooner: the
verdict is the whole suite's), then on every test module: test_scripts.py and tests/test_*.py.
Before the entries, the suite runs once unchanged and must pass. It prints a table: the entry,
caught or survived (or why it could not run), the first test that failed. Exit status 0 when
every entry is caught, 1 otherwise.

--list finds every entry's line and its first test, and shows its change, running nothing. An
entry that survives is a gap in the suite: add the test that catches it, rather than drop the
entry. Each run imports torch afresh and trains small networks: run it alone on the machine, not
in CI (docs/testing.md).
"""
import argparse
import ast
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    what: str           # the behaviour it breaks, as the table says
    file: str           # relative to the repository's root
    where: str          # the function or class that holds the line: "train", "Run.best_epoch"
    find: str           # a regular expression (re.M) for the line's content, found once there
    change: str         # what replaces it (re.sub's template)
    first: str = ""     # the test expected to catch it, run first: "test_scripts.Class.test_x"
                        # or "tests.test_saving.Class.test_x"

    def mutate(self, source):
        """(the changed source, None), or (None, why it cannot be made)."""
        span = _span(source, self.where)
        if span is None:
            return None, f"line not found ({self.where} is not in {self.file})"
        start, end = span
        found = len(re.findall(self.find, source[start:end], re.M))
        if found != 1:
            return None, ("line not found" if not found else f"line not found ({found} matches)")
        changed = source[:start] + re.sub(self.find, self.change, source[start:end], count=1,
                                          flags=re.M) + source[end:]
        if changed == source:
            return None, "the change changes nothing"
        try:
            compile(changed, self.file, "exec")
        except SyntaxError as e:
            return None, f"the change does not compile ({e.msg})"
        return changed, None


def _span(source, where):
    """The character range of the function or class named `where` ("Class.method"), or None."""
    body, node = ast.parse(source).body, None
    for name in where.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                     and n.name == name), None)
        if node is None:
            return None
        body = node.body
    lines = source.splitlines(keepends=True)
    return sum(map(len, lines[:node.lineno - 1])), sum(map(len, lines[:node.end_lineno]))


MUTANTS = [
    # The five that once passed the whole suite
    Mutant("train(): validation not in eval mode (model.eval() removed)",
           "common.py", "train", r"^([ \t]*)model\.eval\(\)[ \t]*$", r"\1pass",
           "test_scripts.LessonLoopTests."
           "test_a_dropout_network_trains_in_train_mode_and_validates_in_eval_mode_every_epoch"),
    Mutant("train(): train mode not restored after validation (model.train() removed)",
           "common.py", "train", r"^([ \t]*)model\.train\(\)[ \t]*$", r"\1pass",
           "test_scripts.LessonLoopTests."
           "test_a_dropout_network_trains_in_train_mode_and_validates_in_eval_mode_every_epoch"),
    Mutant("save_run(): NAME_best.pt saved with the last epoch's weights",
           "plumbing/saving.py", "save_run", r"last, best = run\.epochs, run\.best_epoch",
           "last, best = run.epochs, run.epochs",
           "test_scripts.LessonScriptTests."
           "test_the_best_checkpoint_holds_the_weights_of_the_epoch_of_lowest_validation_loss"),
    Mutant("make_loaders(): the training loader not shuffled",
           "common.py", "make_loaders", r"(?s)(trainloader = make_loader\(.*?shuffle=)True",
           r"\1False",
           "test_scripts.LessonScriptTests."
           "test_the_training_batches_come_in_a_new_order_each_epoch"),
    Mutant("04: another image's probabilities beside the chosen image",
           "04_inference.py", "main", r"model\(img\.to\(device\)\)",
           "model(images[:1].to(device))",
           "test_scripts.LessonInferenceTests."
           "test_04_shows_the_chosen_test_images_own_and_counts_the_test_set_by_hand"),
    # The same behaviours, broken another way
    Mutant("keep_weights(): the live weights kept, not a copy (best = last)",
           "plumbing/saving.py", "keep_weights", r"v\.detach\(\)\.clone\(\)", "v",
           "test_scripts.LessonScriptTests."
           "test_the_best_checkpoint_holds_the_weights_of_the_epoch_of_lowest_validation_loss"),
    Mutant("Run.best_epoch: the epoch of the highest validation loss",
           "common.py", "Run.best_epoch", r"\bmin\(", "max(",
           "test_scripts.LessonScriptTests."
           "test_the_best_checkpoint_holds_the_weights_of_the_epoch_of_lowest_validation_loss"),
    Mutant("make_loader(): shuffled once, the same order every epoch",
           "common.py", "make_loader", r"RandomSampler\(dataset\)",
           "list(RandomSampler(dataset))",
           "test_scripts.LessonScriptTests."
           "test_the_training_batches_come_in_a_new_order_each_epoch"),
    Mutant("train(): validation with gradients on (no torch.no_grad())",
           "common.py", "train", r"with torch\.no_grad\(\):", "with torch.enable_grad():",
           "test_scripts.LessonLoopTests."
           "test_a_dropout_network_trains_in_train_mode_and_validates_in_eval_mode_every_epoch"),
    Mutant("04: test image 0 drawn whatever --index says",
           "04_inference.py", "main", r"img = images\[args\.index\]", "img = images[0]",
           "test_scripts.LessonInferenceTests."
           "test_04_shows_the_chosen_test_images_own_and_counts_the_test_set_by_hand"),
    Mutant("view_classify(): the bars sorted, not in class order",
           "common.py", "view_classify", r"barh\(range\(10\), ps,", "barh(range(10), sorted(ps),",
           "test_scripts.LessonInferenceTests."
           "test_the_picture_and_the_top_3_are_the_learners_photos_own"),
    # The rest of the lesson
    Mutant("normalize(): another constant than the tutorial's 0.5",
           "common.py", "normalize", r"\.div_\(0\.5\)", ".div_(0.25)",
           "test_scripts.DataStepTests.test_loaded_tensors_equal_the_tutorials_transform"),
    Mutant("01: the tutorial's transform with another constant",
           "01_data.py", "main", r"Normalize\(\(0\.5,\), \(0\.5,\)\)",
           "Normalize((0.5,), (0.25,))",
           "test_scripts.ScriptTests.test_01_data_writes_samples_png_and_prints_the_facts"),
    Mutant("FashionNeuralNetwork: dropout's p ignored (always 0)",
           "common.py", "FashionNeuralNetwork.__init__", r"nn\.Dropout\(p=dropout\)",
           "nn.Dropout(p=0.0)",
           "test_scripts.LessonLoopTests."
           "test_the_network_is_784_256_128_64_10_with_relu_and_dropout_after_each_hidden_layer"),
    Mutant("forward(): no dropout after the third hidden layer",
           "common.py", "FashionNeuralNetwork.forward",
           r"self\.dropout\((F\.relu\(self\.layer_hidden_two\(x\)\))\)", r"\1",
           "test_scripts.LessonLoopTests."
           "test_the_network_is_784_256_128_64_10_with_relu_and_dropout_after_each_hidden_layer"),
    Mutant("forward(): log_softmax over the batch (dim=0)",
           "common.py", "FashionNeuralNetwork.forward", r"(log_softmax\(.*)dim=1\)", r"\1dim=0)",
           "test_scripts.LessonLoopTests."
           "test_the_network_is_784_256_128_64_10_with_relu_and_dropout_after_each_hidden_layer"),
    Mutant("03: the network built without dropout",
           "03_dropout.py", "main", r"FashionNeuralNetwork\(dropout=args\.dropout\)",
           "FashionNeuralNetwork()",
           "test_scripts.LessonScriptTests.test_the_knobs_reach_the_run"),
    Mutant("03: NLLLoss swapped for a label-smoothed cross-entropy",
           "03_dropout.py", "main", r"nn\.NLLLoss\(\)", "nn.CrossEntropyLoss(label_smoothing=0.1)",
           "test_scripts.LessonScriptTests."
           "test_the_best_checkpoint_holds_the_weights_of_the_epoch_of_lowest_validation_loss"),
    Mutant("train(): zero_grad removed (gradients pile up)",
           "common.py", "train", r"^([ \t]*)optimizer\.zero_grad\(\).*$", r"\1pass",
           "test_scripts.LessonLoopTests."
           "test_each_batch_is_one_step_down_its_own_gradient_then_the_epoch_is_validated"),
    Mutant("train(): the short last batch's loss counted as a full batch's",
           "common.py", "train", r"running_loss \+= loss\.item\(\) \* len\(labels\)",
           "running_loss += loss.item() * 64",
           "test_scripts.LessonLoopTests.test_loss_and_accuracy_are_counted_per_image"),
    Mutant("train(): accuracy counted per batch, not per image",
           "common.py", "train", r"accuracy \+= equals\.sum\(\)\.item\(\)",
           "accuracy += equals.float().mean().item() * 64",
           "test_scripts.ScriptTests."
           "test_02_baseline_writes_history_plot_and_checkpoints_that_rebuild_the_network"),
    Mutant("train(): labels compared without view() (broadcast to (B, B))",
           "common.py", "train", r"== labels\.view\(\*top_class\.shape\)", "== labels",
           "test_scripts.LessonLoopTests.test_loss_and_accuracy_are_counted_per_image"),
    Mutant("evaluate(): not in eval mode",
           "common.py", "evaluate", r"^([ \t]*)model\.eval\(\)[ \t]*$", r"\1pass",
           "test_scripts.LessonLoopTests."
           "test_evaluate_measures_the_whole_network_in_whatever_mode_it_was_left"),
    Mutant("02: one batch's accuracy with labels not viewed as (64, 1)",
           "02_baseline.py", "main", r"equals = top_class == labels\.view\(\*top_class\.shape\)",
           "equals = top_class == labels",
           "test_scripts.LessonScriptTests."
           "test_02_prints_the_untrained_networks_accuracy_counted_by_hand"),
    Mutant("plot_losses(): the lowest validation loss marked at the last epoch",
           "common.py", "plot_losses", r"best = run\.best_epoch", "best = run.epochs",
           "test_scripts.LessonLoopTests."
           "test_the_loss_plot_draws_both_losses_per_epoch_and_marks_the_lowest_validation_loss"),
    Mutant("print_summary(): the final epoch's loss printed as the lowest",
           "common.py", "print_summary", r"best, last = run\.best_epoch, run\.epochs",
           "best, last = run.epochs, run.epochs",
           "test_scripts.LessonScriptTests."
           "test_the_best_checkpoint_holds_the_weights_of_the_epoch_of_lowest_validation_loss"),
    Mutant("prepare_image(): a learner's photo not centred",
           "plumbing/photo.py", "prepare_image", r"top, left = \(28 - size\[0\]\) // 2, "
           r"\(28 - size\[1\]\) // 2", "top, left = 0, 0",
           "tests.test_photo.PhotoTests."
           "test_a_light_photo_is_negated_trimmed_to_its_garment_scaled_to_28_pixels_and_centred"),
    Mutant("04: the confusion matrix transposed",
           "04_inference.py", "main", r"labels \* 10 \+ preds", "preds * 10 + labels",
           "test_scripts.LessonInferenceTests."
           "test_04_shows_the_chosen_test_images_own_and_counts_the_test_set_by_hand"),
    Mutant("overfitting(): any climb counts, however small beside the noise",
           "common.py", "overfitting", r"return climb > 2 \* noise, climb, noise",
           "return climb > 0, climb, noise",
           "test_scripts.OverfittingRuleTests."
           "test_a_climb_counts_only_when_it_beats_the_curves_own_noise"),
    Mutant("overfitting(): judged on all the epochs, the early fall included",
           "common.py", "overfitting", r"run\.test_losses\[run\.epochs // 3:\]",
           "run.test_losses",
           "test_scripts.OverfittingRuleTests."
           "test_a_climb_counts_only_when_it_beats_the_curves_own_noise"),
    Mutant("05 --seeds: a seed's run not seeded as that seed alone",
           "05_beyond.py", "main", r"^([ \t]*)torch\.manual_seed\(seed\)([ \t]*#.*)?$", r"\1pass",
           "tests.test_beyond.SeedsTests.test_each_seed_of_a_repeat_is_that_seed_run_alone"),
    Mutant("05 --sweep-dropout: a near tie taken for the lower mean",
           "05_beyond.py", "choose", r"close = \[p for p in ranked\[1:\] if .*$", "close = []",
           "tests.test_beyond.SeedsTests."
           "test_a_near_tie_is_said_and_settled_for_the_simplest_and_a_clear_winner_is_taken"),
    Mutant("05 --sweep-dropout: values compared by their means alone, not seed by seed",
           "05_beyond.py", "choose", r"return gaps, 2 \* sd / n \*\* 0\.5",
           "return gaps, 2 * ((mean_sd(map(lowest, runs[p].values()))[1] ** 2 + "
           "mean_sd(map(lowest, runs[best].values()))[1] ** 2) / n) ** 0.5",
           "tests.test_beyond.SeedsTests."
           "test_a_near_tie_is_said_and_settled_for_the_simplest_and_a_clear_winner_is_taken"),
    Mutant("speed: denormals kept in torch's threads in a script's own process",
           "plumbing/speed.py", "for_own_process", r"^([ \t]*)torch\.set_flush_denormal\(True\)$",
           r"\1pass",
           "tests.test_speed.ThreadRuleTests."
           "test_in_its_own_process_a_script_flushes_denormals_in_every_thread_of_torchs"),
    Mutant("speed: the settings read once made in a host too (%run, runpy)",
           "plumbing/speed.py", "owns_process", r"^([ \t]*)for arg in sys\.orig_argv\[1:\]:$",
           r"\1return True\n\1for arg in sys.orig_argv[1:]:",
           "tests.test_speed.HostTests.test_the_host_keeps_its_environment_and_thread_count"),
    Mutant("speed: a batch size whose products differ by thread count keeps the choice on",
           "plumbing/speed.py", "threads_chosen",
           r"if not same_numbers\(module, images, candidates\(threads\)\):",
           "if False:",
           "tests.test_speed.SameNumbersTests."
           "test_a_batch_size_whose_products_differ_keeps_the_count_in_use"),
    Mutant("speed: the check of same numbers draws dropout masks from the run's generator",
           "plumbing/speed.py", "same_numbers", r"copy\.deepcopy\(model\)\.train\(False\)",
           "copy.deepcopy(model).eval()",
           "tests.test_speed.SameNumbersTests.test_the_check_draws_no_random_number_of_the_run"),
    Mutant("saving: two runs into one folder write their sets at once, mixed",
           "plumbing/saving.py", "write_set",
           r"with _write_errors\(paths\[0\], kept\), locked\(paths\[0\]\.parent\):",
           "with _write_errors(paths[0], kept):",
           "tests.test_saving.OutputFolderTests."
           "test_two_runs_saving_into_one_folder_leave_one_runs_set"),
    Mutant("saving: a killed writer's temporary files left for ever",
           "plumbing/saving.py", "locked", r"stale\.unlink\(missing_ok=True\)", "pass",
           "tests.test_saving.OutputFolderTests."
           "test_a_killed_writers_temporary_files_are_removed_by_the_next_save"),
    Mutant("threads: a slowdown on one thread times two threads again at once",
           "plumbing/speed.py", "ThreadChooser.step", r"slowed = self\.choice > 1 and ",
           "slowed = ",
           "tests.test_speed.ThreadRuleTests."
           "test_on_one_thread_a_slowdown_starts_no_round_before_the_one_that_is_due"),
    Mutant("threads: a collapsing count timed until it has cost 1.5 windows",
           "plumbing/speed.py", "ThreadChooser._window_over",
           r"or len\(self\.steps\) >= EARLY and .*\)$", "or False)",
           "tests.test_speed.ThreadRuleTests."
           "test_a_count_that_collapses_is_timed_for_a_few_steps_only"),
    Mutant("threads: a window judged by its median step, which hides the stalls",
           "plumbing/speed.py", "typical", r"return \(sum\(steps\) - max\(steps\)\) / .*$",
           "return sorted(steps)[len(steps) // 2]",
           "tests.test_speed.ThreadRuleTests."
           "test_a_count_that_stalls_now_and_then_is_judged_by_what_it_costs"),
    Mutant("threads: a window's mean with the validation pass in it",
           "plumbing/speed.py", "typical", r"return \(sum\(steps\) - max\(steps\)\) / .*$",
           "return sum(steps) / len(steps)",
           "tests.test_speed.ThreadRuleTests."
           "test_a_pause_between_two_steps_such_as_validation_does_not_count"),
    Mutant("threads: the early cut by the median of the first steps, which hides the stalls",
           "plumbing/speed.py", "ThreadChooser._window_over",
           r"and typical\(self\.steps\) > SLOWER",
           "and sorted(self.steps)[len(self.steps) // 2] > SLOWER",
           "tests.test_speed.ThreadRuleTests."
           "test_a_count_that_stalls_now_and_then_is_judged_by_what_it_costs"),
    Mutant("threads: a pause in a count's first steps ends its window",
           "plumbing/speed.py", "ThreadChooser._window_over",
           r"sum\(self\.steps\) - max\(self\.steps\) >",
           "sum(self.steps) >",
           "tests.test_speed.ThreadRuleTests."
           "test_a_pause_in_a_counts_first_steps_neither_ends_its_window_nor_counts"),
    Mutant("threads: a window of big batches lasts 40 steps whatever they take",
           "plumbing/speed.py", "ThreadChooser._window_over",
           r" or \(len\(self\.steps\) >= 3 and sum\(self\.steps\) >= SECONDS\)", "",
           "tests.test_speed.ThreadRuleTests."
           "test_with_big_batches_a_window_ends_after_its_seconds"),
]


def find_test(name):
    """Whether `name`, "module.Class.method" (the module dotted: tests.test_cli), is a test method
    of the suite."""
    parts = name.split(".")
    if len(parts) < 3:
        return False
    *module, cls, method = parts
    path = ROOT.joinpath(*module).with_suffix(".py")
    if not path.is_file():
        return False
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return any(isinstance(f, ast.FunctionDef) and f.name == method for f in node.body)
    return False


def test_modules(folder):
    """The suite's modules in `folder`, as `python -m unittest` discovers them: test_scripts, then
    the package tests/ (tests.test_beyond, ...)."""
    modules = ["test_scripts"]
    for path in sorted(folder.glob("tests/test*.py")):
        modules.append(f"tests.{path.stem}")
    return modules


def copy_repository(target):
    """The repository's files, without git, outputs, caches, data or checkpoints."""
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
        ".git", "outputs", "__pycache__", "*.pyc", "*.pt", ".venv*", "venv", "data",
        "FashionMNIST"))


def run_suite(folder, first, timeout):
    """Run the suite in `folder`, the tests named in `first` first; (status, first failing test,
    seconds). The status is None when it ran out of time."""
    tests = [*first, *test_modules(folder)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}     # a changed file is never read stale
    start = time.perf_counter()
    # In a session of its own, so that a run out of time ends with the children it forked.
    suite = subprocess.Popen([sys.executable, "-m", "unittest", "-f", *tests], cwd=folder,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        _, err = suite.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(suite.pid, signal.SIGKILL)
        suite.communicate()
        return None, "", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if suite.returncode == 0:
        return 0, "", seconds
    failed = re.search(r"^(?:FAIL|ERROR): (\S+) \(([\w.]+?)(?:\.\1)?\)", err, re.M)
    failed = failed and f"{failed.group(2)}.{failed.group(1)}"
    return suite.returncode, failed or err.strip()[-200:], seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true",
                        help="find each entry's line and print the changes; run nothing")
    parser.add_argument("--only", nargs="+", metavar="TEXT", default=[],
                        help="only the entries whose description holds one of these texts")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds one run of the suite may take (default 600)")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(t in m.what for t in args.only)]
    if not mutants:
        parser.error("--only: no entry holds that text")
    width = max(len(m.what) for m in mutants)

    if args.list:
        missing = 0
        for m in mutants:
            source = (ROOT / m.file).read_text()
            changed, problem = m.mutate(source)
            missing += bool(problem)
            print(f"{m.what} ({m.file}, {m.where}): {problem or 'found'}")
            if not find_test(m.first):
                missing += 1
                print(f"    its first test, {m.first!r}, is not in the suite")
            for line in difflib.unified_diff(source.splitlines(), (changed or source).splitlines(),
                                             lineterm="", n=0):
                if line[:1] in "-+" and line[:3] not in ("---", "+++"):
                    print(f"    {line[0]} {line[1:].strip()}")
        return 1 if missing else 0

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "repo"
        copy_repository(folder)
        status, failed, seconds = run_suite(folder, [], args.timeout)
        if status != 0:
            print(f"The suite fails without any change ({failed}): fix that first.")
            return 1
        print(f"Unchanged: the suite passes ({seconds:.0f} s).\n")
        print(f"{'entry':<{width}}  {'result':<8}  {'s':>4}  first test that failed")
        results = []
        for m in mutants:
            path = folder / m.file
            original = path.read_text()
            changed, problem = m.mutate(original)
            if problem:
                result, failed, seconds = problem, "", 0
            else:
                path.write_text(changed)
                first = [m.first] if find_test(m.first) else []
                try:
                    status, failed, seconds = run_suite(folder, first, args.timeout)
                finally:
                    path.write_text(original)
                result = ("timed out" if status is None else "caught" if status else "survived")
            results.append(result)
            print(f"{m.what:<{width}}  {result:<8}  {seconds:>4.0f}  {failed}", flush=True)
    caught, survived = results.count("caught"), results.count("survived")
    print(f"\n{caught} of {len(results)} caught, {survived} survived, "
          f"{len(results) - caught - survived} not run to the end (line not found, timed out); "
          f"{time.perf_counter() - start:.0f} s in all.")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Measure the answers of docs/exercises.md again: every command of every exercise, on 3 seeds.

    python bench/exercises.py [--seeds 0 1 2] [--work-dir DIR] [--epochs N]

Each command runs as the learner runs it (a subprocess of the real script), with --seed and an
--out-dir of its own added; a command that another exercise already ran on that seed is not run
again, its files are copied. The commands of one exercise share a folder, so --look-inside finds
the networks of 02 and 03 before it. Prints each command's figures as the mean ± the standard
deviation over the seeds, then the total run time. Waits while /tmp/BENCH_LOCK exists before each
run, as every job on a shared machine does. --epochs N (for a quick check) replaces the epochs.
"""
import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DOC = HERE / "docs" / "exercises.md"
LOCK = Path("/tmp/BENCH_LOCK")
HISTORY = {"02_baseline.py": "baseline", "03_dropout.py": "dropout", "05_beyond.py": "beyond"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="the seeds each command runs on (default: 0 1 2)")
    parser.add_argument("--work-dir", help="folder for the runs' files, kept (default: a "
                                           "temporary folder, removed at the end)")
    parser.add_argument("--epochs", type=int,
                        help="train this many epochs instead (default: the commands' own)")
    parser.add_argument("--data-dir", help="passed to every script (default: theirs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        results = run_all(exercises(DOC.read_text()), args, work)
        (work / "results.json").write_text(json.dumps(results, indent=1))
    minutes = (time.perf_counter() - start) / 60
    print(f"\nTotal run time: {minutes:.1f} min for {len(args.seeds)} seeds")


# -------------------------------------------------------------------- the exercises, from the doc

def exercises(text):
    """[(title, commands, snippets)] of the doc: each '## ' heading, the python commands of its
    ```bash blocks and the code of its ```python blocks."""
    found = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0]
        commands = []
        for block in re.findall(r"```bash\n(.*?)```", section, re.S):
            commands += [line.strip() for line in block.splitlines()
                         if line.strip().startswith("python ")]
        snippets = re.findall(r"```python\n(.*?)```", section, re.S)
        found.append((title, commands, snippets))
    return found


# -------------------------------------------------------------------------------------- the runs

def run_all(found, args, work):
    """Run every exercise's commands on every seed, printing each exercise's figures as it ends;
    returns them all, seed by seed, for results.json."""
    done = {}                            # (command, seed) -> the folder it ran in, and its figures
    results = {}
    for title, commands, snippets in found:
        print(f"\n## {title}", flush=True)
        for code in snippets:
            wait_for_the_lock()
            out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True,
                                 text=True, check=True).stdout
            print(out, end="")
            results[title] = {"snippet": out}
        figures = {command: [] for command in commands}
        for seed in args.seeds:
            folder = work / slug(title) / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            for command in commands:
                key = (command, seed)
                if key not in done or "--look-inside" in command:   # it reads this folder's files
                    done[key] = run(command, seed, args, work, folder)
                ran_in, seed_figures = done[key]
                if ran_in != folder:
                    shutil.copytree(ran_in, folder, dirs_exist_ok=True)
                figures[command].append(seed_figures)
        for command, per_seed in figures.items():
            print(f"{command}\n    {summary(per_seed)}", flush=True)
        results[title] = {**results.get(title, {}), **figures}
    return results


def run(command, seed, args, work, folder):
    """One command on one seed, in a folder of its own (in `folder` for --look-inside); returns
    that folder and the run's figures."""
    words = shlex.split(command)[1:]                          # without "python"
    if args.epochs and words[0] in HISTORY and "--look-inside" not in words:
        words = with_flag(words, "--epochs", str(args.epochs))
    if args.data_dir:
        words += ["--data-dir", args.data_dir, "--no-download"]
    if "--look-inside" not in words:
        folder = work / "runs" / f"{slug(' '.join(words))}-seed{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        words += ["--seed", str(seed)]
    wait_for_the_lock()
    print(f"  seed {seed}: {command}", flush=True)
    done = subprocess.run([sys.executable, *words, "--out-dir", str(folder)], cwd=HERE,
                          capture_output=True, text=True)
    if done.returncode not in (0, 1):                       # 1: a training that blew up
        sys.exit(f"{command} --seed {seed} failed ({done.returncode}):\n{done.stderr}")
    if "--look-inside" in words:
        return folder, look_inside_figures(done.stdout)
    history = json.loads((folder / f"{HISTORY[words[0]]}_history.json").read_text())
    return folder, training_figures(history, done.returncode)


def with_flag(words, flag, value):
    """The words with `flag value`, replacing its value if the flag is there."""
    if flag in words:
        i = words.index(flag)
        return words[:i + 1] + [value] + words[i + 2:]
    return words + [flag, value]


def wait_for_the_lock():
    while LOCK.exists():
        time.sleep(15)


def slug(text):
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:60]


# ----------------------------------------------------------------------------------- the figures

def training_figures(history, status):
    train, val, accuracy = history["train_losses"], history["test_losses"], history["accuracies"]
    best = min(range(len(val)), key=val.__getitem__)
    above = [epoch for epoch in range(len(val)) if train[epoch] > val[epoch]]
    return {"final validation loss": val[-1], "lowest validation loss": val[best],
            "epoch of the lowest": best + 1, "final accuracy": accuracy[-1],
            "final training loss": train[-1], "final gap (val - train)": val[-1] - train[-1],
            "first epoch's gap (val - train)": val[0] - train[0],
            "epochs with training loss above validation": len(above),
            "epochs": len(val), "diverged": int(status == 1)}


def look_inside_figures(out):
    """The dead units and losses that 05_beyond.py --look-inside prints, for each network."""
    figures = {}
    pattern = (r"^(Without|With) dropout .*?: (\d+) of 256 first-layer units dead.*\n"
               r"\s+Training loss: ([\d.]+) as trained .*?, ([\d.]+) in eval mode at the end;"
               r"\s+Test loss: ([\d.]+);\s+Test accuracy: ([\d.]+)")
    for which, dead, trained, evaluated, test, accuracy in re.findall(pattern, out, re.M):
        name = "without dropout" if which == "Without" else "with dropout"
        figures.update({f"{name}: dead units": int(dead),
                        f"{name}: training loss as trained": float(trained),
                        f"{name}: training loss in eval mode": float(evaluated),
                        f"{name}: test loss": float(test),
                        f"{name}: test accuracy": float(accuracy)})
    if len(figures) != 10:
        sys.exit(f"05_beyond.py --look-inside printed what this script cannot read:\n{out}")
    return figures


def mean_sd(values):
    """The mean and the standard deviation (n - 1 in the denominator; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def summary(per_seed):
    """Each figure as mean ± sd over the seeds, on one line each."""
    lines = []
    for name in per_seed[0]:
        values = [figures[name] for figures in per_seed]
        mean, sd = mean_sd(values)
        form = ".1f" if isinstance(values[0], int) else ".4f"
        each = ", ".join(f"{v:{form}}" for v in values)
        lines.append(f"{name}: {mean:{form}} ± {sd:{form}}  ({each})")
    return "\n    ".join(lines)


if __name__ == "__main__":
    main()

"""Beyond the tutorial: how far the same network goes, honestly.

    python 05_beyond.py --val-split 10000 --dropout 0 --mixup 0.2 --lr 0.002 --schedule cosine \
        --weight-decay 0.1 --epochs 50 --final-fit
    python 05_beyond.py --val-split 10000 --sweep-dropout 0 0.1 0.2 0.3 0.5

The same 784-256-128-64-10 network and loop as 02 and 03, with what the tutorial leaves out:
choosing on held-out training images (--val-split) so the test set is touched once, at the end;
a learning rate schedule, augmented or mixed batches, decoupled weight decay (AdamW); a final fit
on all 60000 images; and a sweep that chooses dropout's p by validation. Writes beyond_loss.png,
beyond_history.json, beyond.pt and beyond_best.pt; with --sweep-dropout instead,
dropout_sweep.png and dropout_sweep.json; with --final-fit, also beyond_final.pt.
docs/beyond.md has the measured results.
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # finds plumbing/ under python -I
from plumbing import cli, errors, saving, speed    # first of all: see plumbing/__init__.py

from functools import partial

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn
from torch import optim
from torch.utils.data import Subset, TensorDataset

import common
from common import CLASSES, FashionNeuralNetwork


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = cli.get_device(args.device)
    out_dir = saving.prepare_out_dir(args.out_dir)
    if args.look_inside:                          # no training: 02's and 03's networks, drawn
        return look_inside(args, device, out_dir)
    print(f"Settings: dropout {args.sweep_dropout or args.dropout_per_layer or args.dropout}, "
          f"epochs {args.epochs}, "
          f"batch size {args.batch_size}, lr {args.lr}, weight decay {args.weight_decay} "
          f"({'AdamW' if args.weight_decay else 'Adam'}), schedule {args.schedule}, "
          f"augment {args.augment}, mixup {args.mixup}, validation split {args.val_split}, "
          f"final fit {args.final_fit}, train size {args.train_size or 'all'}, "
          f"eval() {'forgotten' if args.no_eval else 'used'}, "
          f"seed {args.seed}{seeds_note(args)}, device {device}")
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size,
                                               download=not args.no_download)
    if args.sweep_dropout:
        return sweep(args, trainloader, testloader, device, out_dir)
    progress = Progress(args, runs=args.seeds)
    outcomes = {}
    for seed in seeds(args):
        progress.start(f"seed {seed}")
        torch.manual_seed(seed)          # each seed's run as if alone: `--seed SEED` gives it too
        loader = trainloader
        if args.train_size:
            loader = smaller_trainloader(trainloader, args.train_size, seed, args.batch_size)
        outcomes[seed] = one_run(args, seed, loader, testloader, device,
                                 out_dir if seed == args.seed else None)
        progress.done(outcomes[seed]["run"])
        if outcomes[seed]["status"]:
            break
    if args.seeds > 1:
        # A stopped run is left out of the table, as in a sweep; its epochs are kept, marked.
        runs = {seed: o["run"] for seed, o in outcomes.items() if not o["run"].stopped}
        if runs:
            print_spread({args.dropout: runs}, "dropout")
        tests = [o["test_accuracy"] for o in outcomes.values() if o["test_accuracy"] is not None]
        if tests:
            mean, sd = mean_sd(tests)
            print(f"Test accuracy, once per seed: {', '.join(f'{t:.4f}' for t in tests)}: "
                  f"{mean:.4f} ± {sd:.4f} (mean ± standard deviation of {len(tests)} seeds)")
        table = {}
        for seed, o in outcomes.items():
            table[str(seed)] = {**saving.history(o["run"]), "test_accuracy": o["test_accuracy"]}
            if o["run"].stopped:
                table[str(seed)]["stopped"] = o["run"].stopped
        path = out_dir / "beyond_seeds.json"
        saving.write_set({path: lambda f: f.write(saving.json_bytes(table))})
        print(f"Wrote {path}")
        run = outcomes[seed]["run"]                     # the last: the one that stopped, if one did
        if run.stopped:
            say_stopped("series of seeds", progress, run, f"seed {seed}", "tabled", "",
                        "beyond_seeds.json")
    return next((o["status"] for o in outcomes.values() if o["status"]), 0)


def one_run(args, seed, trainloader, testloader, device, out_dir):
    """One seed's run of the settings, as a single run (--seeds 1) makes it; its files written to
    out_dir unless None. Returns its Run, its test accuracy (None if not tested) and its status."""
    fitloader, valloader, validated_on = trainloader, testloader, "test"    # as in the tutorial
    if args.val_split:
        fitloader, valloader = hold_out(trainloader, args, seed)
        validated_on = "validation"
    model, run = fit(args, args.dropout, fitloader, valloader, validated_on, device)
    if args.val_split and run.epochs and not run.stopped and not args.final_fit:
        # The epoch was chosen on the validation set; now, once, the test set judges that choice.
        model.load_state_dict(run.weights[run.best_epoch])
        run.test_of_best = test_once(model, testloader, device,
                                     f"with the weights of epoch {run.best_epoch}")
    if out_dir:
        fig = None
        if run.epochs:
            mixed = " (on mixed images)" * bool(args.mixup)
            fig = common.plot_losses({"beyond": run}, f"{describe(args, args.dropout)}\n"
                                     f"training{mixed} and validation loss")
        saving.save_run("beyond", run, checkpoint_dropout(args), out_dir, plot=fig)   # one set
    common.print_summary(run, cli.divergence_advice(args))
    outcome = {"run": run, "status": cli.EXIT_STATUS[run.stopped],
               "test_accuracy": (run.test_of_best or {}).get("test_accuracy")}
    if args.final_fit and run.epochs and not run.stopped:
        outcome["status"], final = final_fit(args, seed, args.dropout, run.best_epoch,
                                             trainloader, testloader, device, out_dir)
        outcome["test_accuracy"] = final and final["test_accuracy"]
    elif args.final_fit and out_dir:
        print(f"No final fit: the first run did not end{earlier_final(out_dir)}.", file=sys.stderr)
    return outcome


def parse_args(argv):
    parser = cli.make_training_parser(__doc__)
    cli.add_dropout_arg(parser)
    parser.add_argument("--val-split", type=cli.non_negative_int, default=0, metavar="N",
                        help="training images held out to validate on, so the test set is touched "
                             "once, at the end; 0 validates on the test set, as the tutorial does")
    parser.add_argument("--final-fit", action="store_true",
                        help="with --val-split: once the epoch is chosen, train again from scratch "
                             "on all the training images for that many epochs, and test once")
    parser.add_argument("--weight-decay", type=cli.non_negative_float, default=0.0,
                        help="decoupled weight decay (AdamW, Loshchilov and Hutter 2019), not an "
                             "L2 penalty; 0 keeps the tutorial's plain Adam")
    parser.add_argument("--schedule", choices=("none", "cosine"), default="none",
                        help="learning rate schedule: cosine decays it to zero over --epochs, "
                             "batch by batch (a final fit follows it as far as its epochs go)")
    parser.add_argument("--augment", choices=("none", "shift", "shift+flip"), default="none",
                        help="random shifts of up to 2 pixels (and left-right mirroring) of the "
                             "training batches")
    parser.add_argument("--mixup", type=cli.non_negative_float, default=0.0, metavar="ALPHA",
                        help="train on pairs of images mixed in a proportion drawn from "
                             "Beta(ALPHA, ALPHA) per batch, their labels mixed alike; 0 is off, "
                             "else from 0.01")
    parser.add_argument("--seeds", type=cli.positive_int, default=1, metavar="N",
                        help="train every setting (one run, or each value of a sweep) on N seeds, "
                             "--seed and the ones after it, and give each figure's mean and "
                             "standard deviation")
    parser.add_argument("--sweep-dropout", type=cli.probability, nargs="+", metavar="P",
                        help="with --val-split: one run per dropout value, the other settings as "
                             "given; choose the smallest p whose lowest validation loss is within "
                             "twice the paired standard error of the lowest, at its lowest epoch")
    add_exercise_args(parser)
    args = parser.parse_args(argv)
    for flag in ("train_size", "no_eval", "dropout_per_layer"):
        if getattr(args, flag) and args.sweep_dropout:
            parser.error(f"argument --{flag.replace('_', '-')}: not with --sweep-dropout; one "
                         "setting at a time")
    if args.no_eval and args.dropout_per_layer:
        parser.error("argument --no-eval: not with --dropout-per-layer; one of them at a time")
    for flag in ("final_fit", "sweep_dropout"):
        if getattr(args, flag) and not args.val_split:
            parser.error(f"argument --{flag.replace('_', '-')}: needs --val-split N (10000 is "
                         "a good choice), to choose on held-out training images")
    if 0 < args.mixup < MIXUP_LOWEST:
        parser.error(f"argument --mixup: {args.mixup:g} is too small: below {MIXUP_LOWEST:g}, "
                     "torch's Beta draws underflow (to 0, 1 or exactly 0.5, not Beta's "
                     f"proportions); use 0 (off) or a number from {MIXUP_LOWEST:g} to "
                     f"{MIXUP_HIGHEST:.2g}")
    if args.mixup > MIXUP_HIGHEST:
        parser.error(f"argument --mixup: {args.mixup:g} is too large: torch holds it as infinity, "
                     "and every proportion it draws is 0, which mixes nothing; use 0 (off) or a "
                     f"number from {MIXUP_LOWEST:g} to {MIXUP_HIGHEST:.2g}")
    last = args.seed + args.seeds - 1                 # the last seed trained on (seeds())
    if last > cli.LAST_SEED:
        parser.error(f"argument --seeds: {args.seeds} seeds from --seed {args.seed} end at {last}, "
                     f"past torch.manual_seed's last, {cli.LAST_SEED}: use --seeds "
                     f"{cli.LAST_SEED - args.seed + 1} or fewer, or a smaller --seed")
    if args.sweep_dropout and len(set(args.sweep_dropout)) < len(args.sweep_dropout):
        parser.error("argument --sweep-dropout: each value once, please")
    if args.lr * args.weight_decay >= 1:       # AdamW multiplies each weight by 1 - lr * decay
        parser.error(f"argument --weight-decay: {args.weight_decay:g} times --lr {args.lr:g} is "
                     f"{args.lr * args.weight_decay:g}, which shrinks every weight past zero at "
                     f"each step: use a weight decay below {1 / args.lr:g} (0.1 is a good start)")
    return args


def fit(args, dropout, trainloader, valloader, validated_on, device, epochs=None):
    """One run of the tutorial's training (common.train) with this script's settings: a new
    network with this dropout, trained `epochs` (--epochs) epochs. Returns the model and its Run."""
    model = make_network(args, dropout).to(device)
    # A mixed image's label is two probabilities, which NLLLoss cannot take. CrossEntropyLoss can;
    # its log_softmax leaves our log-probabilities as they are, so on labels it is NLLLoss.
    loss_function = nn.CrossEntropyLoss() if args.mixup else nn.NLLLoss()
    fused = cli.fused_adam(device)     # one kernel for all the weights, where the device has one
    if args.weight_decay:       # AdamW shrinks the weights directly, beside Adam's scaled steps
        optimizer = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                fused=fused)
    else:
        optimizer = optim.Adam(model.parameters(), lr=args.lr, fused=fused)
    if args.augment != "none":
        trainloader = Augmented(trainloader, shift=2, flip=args.augment == "shift+flip")
    if args.mixup:
        trainloader = Mixup(trainloader, args.mixup)
    scheduler = None
    if args.schedule == "cosine":
        # As long as --epochs, also in a shorter final fit; train() steps it after each batch.
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                         T_max=args.epochs * len(trainloader))
    with speed.threads_chosen(model, optimizer, device):      # as in 02_baseline.py
        run = common.train(model, trainloader, valloader, loss_function, optimizer,
                           epochs or args.epochs, device, validated_on=validated_on,
                           scheduler=scheduler)
    return model, run


def final_fit(args, seed, dropout, epochs, trainloader, testloader, device, out_dir):
    """A new network trained from scratch on all the training images for the chosen number of
    epochs, tested once and saved as beyond_final.pt (unless out_dir is None). Returns the exit
    status and the test set's verdict (None when stopped)."""
    print(f"Final fit: a new network on all {len(trainloader.dataset)} training images for the "
          f"{plural(epochs, 'epoch')} chosen (its validation images are now training images too, "
          "so their numbers judge nothing).")
    _, valloader = hold_out(trainloader, args, seed)                  # the same images as before
    model, final = fit(args, dropout, trainloader, valloader, "validation", device, epochs=epochs)
    if final.stopped:
        print(f"The final fit stopped after {final.epochs} of its {plural(epochs, 'epoch')}: there "
              f"is no final network to test (the first run is saved above)"
              f"{earlier_final(out_dir) if out_dir else ''}.", file=sys.stderr)
        if final.stopped == "diverged":
            print(f"error: the final fit diverged at epoch {final.epochs + 1} "
                  f"{cli.divergence_advice(args)}.", file=sys.stderr)
        return cli.EXIT_STATUS[final.stopped], None
    metrics = {"epoch": epochs, **test_once(model, testloader, device,
                                            f"with the final fit's {plural(epochs, 'epoch')}")}
    if out_dir:
        path = out_dir / "beyond_final.pt"
        checkpoint = saving.checkpoint(model.state_dict(), dropout, metrics)
        saving.write_set({path: lambda f: torch.save(checkpoint, f)})
        print(f"Saved the final fit's network to {path}")
    return 0, metrics


def earlier_final(out_dir):
    """A note naming the beyond_final.pt of an earlier run, if there is one: not this run's."""
    path = out_dir / "beyond_final.pt"
    return f"; the {path.name} in {out_dir} is an earlier run's" if path.exists() else ""


def plural(n, word):
    """'1 epoch', '2 epochs'."""
    return f"{n} {word}{'s' * (n != 1)}"


def test_once(model, testloader, device, which):
    """The test set's verdict on a choice already made, printed; its loss and accuracy."""
    test_loss, test_accuracy = common.evaluate(model, *testloader.dataset.tensors, device)
    print(f"Test set, once, {which}: loss {test_loss:.3f}, accuracy {test_accuracy:.3f}")
    return {"test_loss": test_loss, "test_accuracy": test_accuracy}


def sweep(args, trainloader, testloader, device, out_dir):
    """One run per dropout value and seed on the validation split, each as if alone; the table of
    their means and spreads, dropout_sweep.png; the choice (the lowest mean validation loss,
    unless the noise cannot tell it from the next); with --final-fit, the test set once a seed."""
    progress = Progress(args, runs=len(args.sweep_dropout) * args.seeds)
    runs, run = {p: {} for p in args.sweep_dropout}, None
    for p in args.sweep_dropout:
        for seed in seeds(args):
            progress.start(f"dropout {p}, seed {seed}")
            torch.manual_seed(seed)     # each run as if alone: `--seed SEED` gives the same run
            fitloader, valloader = hold_out(trainloader, args, seed)
            _, run = fit(args, p, fitloader, valloader, "validation", device)
            progress.done(run)
            if run.stopped:
                break
            runs[p][seed] = run
        if run.stopped:
            break
    runs = {p: r for p, r in runs.items() if r}
    if run.stopped:     # told as a single run is told: its numbers, then how it ended
        common.print_summary(run, cli.divergence_advice(args))
    chosen, why = None, None
    if runs:
        print_spread(runs, "dropout")
        if not run.stopped:
            chosen, why = choose(runs)
    epochs = chosen is not None and {seed: r.best_epoch for seed, r in runs[chosen].items()}
    # A stopped run is left out of the table, the picture and the choice; its epochs are kept.
    stopped = {"dropout": p, "seed": seed, "how": run.stopped, **saving.history(run)}
    table = {"seeds": list(seeds(args)),
             "runs": {str(p): {str(seed): saving.history(r) for seed, r in rs.items()}
                      for p, rs in runs.items()},
             "chosen": None if chosen is None else {"dropout": chosen, "epochs": epochs,
                                                    "why": why},
             "stopped": stopped if run.stopped and run.epochs else None}
    files = {}
    if runs:
        files[out_dir / "dropout_sweep.png"] = partial(saving.write_figure,
                                                       plot_sweep(runs, chosen))
    if runs or table["stopped"]:
        files[out_dir / "dropout_sweep.json"] = lambda f: f.write(saving.json_bytes(table))
    if files:
        saving.write_set(files)
        print(f"Wrote {listed(str(path) for path in files)}")
    for name in ("dropout_sweep.png", "dropout_sweep.json"):
        if out_dir / name not in files and (out_dir / name).exists():
            print(f"The {name} in {out_dir} is an earlier run's.")
    if run.stopped:
        say_stopped("sweep", progress, run, f"dropout {p}, seed {seed}", "drawn and tabled",
                    ", and no choice is made", "dropout_sweep.json")
        if args.final_fit:
            print(f"No final fit: the sweep did not end{earlier_final(out_dir)}.", file=sys.stderr)
        return cli.EXIT_STATUS[run.stopped]
    print(f"Chosen: dropout {chosen}. {why}")
    if args.final_fit:
        status, tests = 0, []
        for seed in seeds(args):
            torch.manual_seed(seed)
            status, test = final_fit(args, seed, chosen, epochs[seed], trainloader, testloader,
                                     device, out_dir if seed == args.seed else None)
            if status:
                return status
            tests.append(test["test_accuracy"])
        if args.seeds > 1:
            mean, sd = mean_sd(tests)
            print(f"Test accuracy of dropout {chosen}, once per seed: "
                  f"{', '.join(f'{t:.4f}' for t in tests)}: {mean:.4f} ± {sd:.4f}")
    return 0


def say_stopped(series, progress, run, which, shown, then, filename):
    """The one rule for a series of runs (a sweep, --seeds) in which `run` stopped: the finished
    runs are `shown` ("tabled"), the stopped one left out, and its completed epochs kept in
    `filename`, marked stopped."""
    finished = progress.started - 1
    if finished:
        told = (f"{'its' if finished > 1 else 'the'} {plural(finished, 'finished run')} "
                f"{'are' if finished > 1 else 'is'} {shown}, the stopped one left out")
    else:
        told = "no run finished, so nothing is tabled"
    kept = ""
    if run.epochs:
        kept = (f" Its {plural(run.epochs, 'completed epoch')} {'is' if run.epochs == 1 else 'are'}"
                f" kept in {filename}, marked stopped.")
    print(f"The {series} stopped during its run {progress.started} of {progress.runs} ({which}), "
          f"after {run.epochs} of its {progress.args.epochs} epochs: {told}{then}.{kept}",
          file=sys.stderr)


# ------------------------------------------------------------------ seeds, means and their spread

# The largest seed torch.manual_seed takes, as --seed's type allows it (plumbing.cli)


def seeds(args):
    """The seeds each setting is trained on: --seed and the --seeds - 1 after it."""
    return range(args.seed, args.seed + args.seeds)


def seeds_note(args):
    return f" to {args.seed + args.seeds - 1} ({args.seeds} seeds)" if args.seeds > 1 else ""


def mean_sd(values):
    """The mean and the standard deviation over seeds (n - 1 in the denominator; 0 for one)."""
    values = list(values)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def lowest(run):
    return run.test_losses[run.best_epoch - 1]


def print_spread(runs, name):
    """The table of a sweep or of one setting (runs: value -> {seed: Run}): each figure as the
    mean ± the standard deviation over the seeds, and how many of them overfit (the rule of
    common.overfitting)."""
    # The final gap: the final validation loss above the final training loss, how much of what
    # the network learnt holds only for its training images. Overfitting: common.overfitting's
    # rule, the validation loss's climb over the last two thirds of the epochs against its noise.
    n = max(map(len, runs.values()))
    figures = {"lowest val loss": (lowest, ".4f"),
               "at epoch": (lambda r: r.best_epoch, ".1f" if n > 1 else ".0f"),
               "final val loss": (lambda r: r.test_losses[-1], ".4f"),
               "final gap": (lambda r: r.test_losses[-1] - r.train_losses[-1], "+.3f"),
               "val accuracy at lowest": (lambda r: r.accuracies[r.best_epoch - 1], ".3f")}
    width = 22 if n > 1 else 15
    print(f"\n{name:>7} {'seeds':>5} " + " ".join(f"{f:>{width}}" for f in figures)
          + f" {'overfitting':>11}")
    for value, rs in runs.items():
        cells = []
        for figure, form in figures.values():
            mean, sd = mean_sd(figure(r) for r in rs.values())
            cells.append(f"{mean:{form}} ± {sd:{form.strip('+')}}" if n > 1 else f"{mean:{form}}")
        verdicts = [common.overfitting(r)[0] for r in rs.values()]
        verdict = ("too early" if None in verdicts else f"{sum(verdicts)} of {len(verdicts)}"
                   if n > 1 else "yes" if verdicts[0] else "no")
        print(f"{value:>7} {len(rs):>5} " + " ".join(f"{c:>{width}}" for c in cells)
              + f" {verdict:>11}")
    if n > 1:
        print("(mean ± standard deviation over the seeds; overfitting: on how many seeds)")


def listed(names):
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def choose(runs):
    """The dropout value of the lowest mean validation loss, unless another is closer to it than
    the noise can tell: then the smallest of the values so close, the simplest network. Every value
    ran on the same seeds, and a seed sets the held-out images and the starting weights alike for
    each, so two values are compared seed by seed: the noise is twice the standard error of the
    mean of their per-seed differences. Returns the value and why, in words."""
    mean = {p: mean_sd(map(lowest, rs.values()))[0] for p, rs in runs.items()}
    ranked = sorted(mean, key=mean.get)
    best, n = ranked[0], min(map(len, runs.values()))
    if n < 2 or len(ranked) < 2:
        return best, ("It has the lowest validation loss, on one seed: with no spread to compare "
                      "with, a small difference may be noise (--seeds 3 tells).")

    def difference(p):                   # p's lowest loss above best's, seed by seed: mean, noise
        gaps, sd = mean_sd(lowest(runs[p][s]) - lowest(runs[best][s]) for s in runs[best])
        return gaps, 2 * sd / n ** 0.5
    close = [p for p in ranked[1:] if (d := difference(p))[0] < d[1]]
    if not close:
        gap, noise = difference(ranked[1])
        return best, (f"Its mean lowest validation loss is the lowest, {gap:.4f} below the next "
                      f"(dropout {ranked[1]}), more than twice the standard error of that "
                      f"difference seed by seed ({noise / 2:.4f}): a difference the seeds agree "
                      "on.")
    chosen = min([best] + close)
    return chosen, (f"Dropout {best} has the lowest mean validation loss, but "
                    f"{listed(f'dropout {p}' for p in close)} "
                    f"{'is' if len(close) == 1 else 'are'} closer to it than twice the standard "
                    "error of the difference, seed by seed: the seeds cannot tell them apart. So "
                    f"the smallest of them, the simplest network, is taken: dropout {chosen}.")


class Progress:
    """Where a long run of runs is, printed before each: which run, and the time left, estimated
    from the seconds per epoch so far."""

    def __init__(self, args, runs):
        self.args, self.runs, self.started, self.seconds, self.epochs = args, runs, 0, 0.0, 0

    def start(self, what):
        self.started += 1
        if self.runs < 2:
            return
        left = ""
        if self.epochs:
            per_epoch = self.seconds / self.epochs
            remaining = (self.runs - self.started + 1) * self.args.epochs
            final = " (and the final fit's)" * self.args.final_fit
            left = f": about {per_epoch * remaining / 60:.0f} min left{final}"
        print(f"Run {self.started} of {self.runs}, {what}{left}", flush=True)

    def done(self, run):
        self.seconds += sum(run.seconds)
        self.epochs += run.epochs


# ----------------------------------------------------------------------------- the validation split

def hold_out(trainloader, args, seed):
    """--val-split N training images split off to validate on, the same ones for the same seed:
    a trainloader over the rest (shuffled) and a loader over them (in order). Both draw their
    batches from the training images where they are: no copy of the set is made."""
    dataset = trainloader.dataset
    if not 0 < args.val_split < len(dataset):
        errors.fail(f"--val-split {args.val_split} must leave training images: use a number from "
                    f"1 to {len(dataset) - 1}.")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    val, train = order[:args.val_split].tolist(), order[args.val_split:].tolist()
    return (common.make_loader(Subset(dataset, train), args.batch_size, shuffle=True),
            common.make_loader(Subset(dataset, val), args.batch_size, shuffle=False))


# ---------------------------------------------------------------------- augmented and mixed batches

# Images augmented or mixed at a time: the copies made on the way stay under 60 MB, even when a
# batch is the whole training set (each batch's images are in memory once, and its result once).
CHUNK = 4096


class Augmented:
    """A trainloader whose batches come randomly shifted by up to `shift` pixels, and, with flip,
    mirrored left-right: labels stay true, and whole batches at once keep the epoch fast."""

    def __init__(self, loader, shift=2, flip=False):
        self.loader, self.dataset, self.shift, self.flip = loader, loader.dataset, shift, flip

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        # map() keeps no batch between two steps: only the one being trained on is in memory.
        return map(self.augment, self.loader)

    def augment(self, batch):
        images, labels = batch                                             # (B, 1, 28, 28)
        b, s = len(images), self.shift
        if self.flip:
            mirror = torch.rand(b, 1, 1, 1) < 0.5
        dy, dx = torch.randint(0, 2 * s + 1, (2, b, 1))
        augmented = torch.empty_like(images)
        for i in range(0, b, CHUNK):
            part = images[i:i + CHUNK]                                     # (C, 1, 28, 28)
            if self.flip:
                part = torch.where(mirror[i:i + CHUNK], part.flip(-1), part)
            padded = F.pad(part, (s, s, s, s), value=-1.0)        # black border, (C, 1, 32, 32)
            rows = (torch.arange(28) + dy[i:i + CHUNK])[:, :, None]          # (C, 28, 1)
            cols = (torch.arange(28) + dx[i:i + CHUNK])[:, None, :]          # (C, 1, 28)
            which = torch.arange(len(part))[:, None, None]
            augmented[i:i + CHUNK, 0] = padded[which, 0, rows, cols]
        return augmented, labels


# The alphas whose Beta(alpha, alpha) torch draws as Beta's. Below 0.01 its float32 draws underflow
# to 0, 1 or, from 0 / 0, exactly 0.5 (in a million draws: 839 of 0.5 at 0.005, 1 at 0.009, none at
# 0.01); above float32's largest number, alpha is infinite and every draw is 0.
MIXUP_LOWEST, MIXUP_HIGHEST = 0.01, torch.finfo(torch.float32).max


class Mixup:
    """A trainloader whose batches come mixed in pairs (mixup, https://arxiv.org/abs/1710.09412):
    each image becomes lam * itself + (1 - lam) * another of the batch, and its label the
    probabilities lam for its class and 1 - lam for the other's, lam drawn per batch from
    Beta(alpha, alpha)."""

    def __init__(self, loader, alpha):
        self.loader, self.dataset = loader, loader.dataset
        self.beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return map(self.mix, self.loader)             # no batch kept between steps, as Augmented

    def mix(self, batch):
        images, labels = batch                                             # (B, 1, 28, 28), (B,)
        lam = self.beta.sample().item()
        other = torch.randperm(len(labels))
        targets = F.one_hot(labels, len(CLASSES)).float()                   # (B, 10)
        mixed = torch.empty_like(images)
        for i in range(0, len(images), CHUNK):
            mixed[i:i + CHUNK] = lam * images[i:i + CHUNK] + (1 - lam) * images[other[i:i + CHUNK]]
        return mixed, lam * targets + (1 - lam) * targets[other]


# --------------------------------------------------------- the exercises' knobs (docs/exercises.md)

def add_exercise_args(parser):
    """The flags docs/exercises.md's questions need, beyond the tutorial's and this script's."""
    parser.add_argument("--train-size", type=cli.non_negative_int, default=0, metavar="N",
                        help="train on N training images only: the first N of a shuffle seeded by "
                             "the run's seed, the same N for every other setting; 0 takes all")
    parser.add_argument("--dropout-per-layer", type=cli.probability, nargs=3,
                        metavar=("P1", "P2", "P3"),
                        help="dropout after the first, second and third hidden layer, in place of "
                             "--dropout's one p after each (default: not given, --dropout's p)")
    parser.add_argument("--no-eval", action="store_true",
                        help="validate without model.eval(), as a loop that forgot it: dropout "
                             "stays on while validating (default: off, eval() used)")
    parser.add_argument("--look-inside", action="store_true",
                        help="train nothing: draw the first layer's weights of OUT_DIR/baseline.pt "
                             "and OUT_DIR/dropout.pt (02's and 03's) in weights.png, count their "
                             "dead units, and exit (default: off)")


class ForgottenEval(FashionNeuralNetwork):
    """The network whose eval() does nothing, as if the loop had forgotten model.eval(): dropout
    stays on while validating (--no-eval)."""

    def eval(self):
        return self


class DropoutPerLayer(FashionNeuralNetwork):
    """The network with a dropout of its own after each hidden layer (--dropout-per-layer)."""

    def __init__(self, p1, p2, p3):
        super().__init__()                  # its self.dropout (p=0) is left unused by forward()
        self.dropout_one, self.dropout_two, self.dropout_three = (nn.Dropout(p1), nn.Dropout(p2),
                                                                  nn.Dropout(p3))

    def forward(self, x):
        x = x.view(x.shape[0], -1)                                    # (B, 784)
        x = self.dropout_one(F.relu(self.layer_input(x)))             # (B, 256)
        x = self.dropout_two(F.relu(self.layer_hidden_one(x)))        # (B, 128)
        x = self.dropout_three(F.relu(self.layer_hidden_two(x)))      # (B, 64)
        return F.log_softmax(self.layer_output(x), dim=1)             # (B, 10)


def make_network(args, dropout):
    """A new network for a run: the tutorial's, or the variant an exercise's flag asks for."""
    if args.dropout_per_layer:
        return DropoutPerLayer(*args.dropout_per_layer)
    if args.no_eval:
        return ForgottenEval(dropout=dropout)
    return FashionNeuralNetwork(dropout=dropout)


def checkpoint_dropout(args):
    """The one p a checkpoint holds: with --dropout-per-layer the largest of the three (04 loads
    it into the one-p network, in eval mode, where p changes nothing)."""
    if args.dropout_per_layer:
        return max(args.dropout_per_layer)
    return args.dropout


def smaller_trainloader(trainloader, n, seed, batch_size):
    """A trainloader over the first n images of a shuffle of the training set seeded by `seed`:
    the same images for a seed whatever the other settings (--train-size)."""
    images, labels = trainloader.dataset.tensors                      # (60000, 1, 28, 28), (60000,)
    if n > len(labels):
        errors.fail(f"--train-size {n} is more than the {len(labels)} training images: use a "
                    f"number from 1 to {len(labels)}, or 0 for all of them.")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    keep = order[:n]
    return common.make_loader(TensorDataset(images[keep], labels[keep]), batch_size, shuffle=True)


# ------------------------------------------------------------------------------------ a look inside

def look_inside(args, device, out_dir):
    """--look-inside: for 02's network and 03's, the dead units of the first layer and the losses
    in eval mode, printed; their first layers' 256 weight vectors, drawn in weights.png."""
    trainloader, testloader = common.load_data(args.data_dir, download=not args.no_download)
    test_images, test_labels = testloader.dataset.tensors
    networks, dead = {}, {}
    for name, stem, script in (("without dropout", "baseline", "02_baseline.py"),
                               ("with dropout", "dropout", "03_dropout.py")):
        model, checkpoint, history = read_trained(out_dir, stem, script, device)
        networks[name], dead[name] = model, dead_units(model, test_images.to(device))
        train_loss, _ = common.evaluate(model, *trainloader.dataset.tensors, device)
        test_loss, test_accuracy = common.evaluate(model, test_images, test_labels, device)
        print(f"{name.capitalize()} ({stem}.pt, dropout {checkpoint['dropout']}, epoch "
              f"{checkpoint['epoch']}): {len(dead[name])} of 256 first-layer units dead (never "
              f"active on any of the {len(test_labels)} test images)")
        # The training loss the run printed is the epoch's mean in train mode, dropout on, while
        # the weights still moved; in eval mode at the end, it is the same network as validated.
        print(f"  Training loss: {history['train_losses'][-1]:.3f} as trained (train mode, the "
              f"last epoch's mean), {train_loss:.3f} in eval mode at the end;  Test loss: "
              f"{test_loss:.3f};  Test accuracy: {test_accuracy:.3f}")
    path = out_dir / "weights.png"
    saving.save_figures({path: plot_first_layers(networks, dead)})
    print(f"Wrote {path}")
    return 0


def read_trained(out_dir, stem, script, device):
    """The network of OUT_DIR/STEM.pt in eval mode, its checkpoint and its history; one sentence
    naming the script to run when they are missing or unreadable."""
    if not (out_dir / f"{stem}.pt").is_file():
        errors.fail(f"--look-inside reads {stem}.pt, which is not in {out_dir}: run {script} "
                    f"with --out-dir {out_dir} first.")
    try:
        model, checkpoint = saving.load_checkpoint(out_dir / f"{stem}.pt", FashionNeuralNetwork,
                                                   device)
    except errors.BadFile as e:                # its sentence says what to do
        errors.fail(f"{e}")
    try:
        history = saving.read_history(out_dir / f"{stem}_history.json")
    except errors.BadFile as e:
        errors.fail(f"{e}: run {script} with --out-dir {out_dir} again.")
    return model, checkpoint, history


def dead_units(model, images):
    """The first-layer units never active on `images`: their pre-activation, the input to the
    ReLU, is <= 0 on every image, so they pass nothing on and get no gradient. A list of indices."""
    with torch.no_grad():
        pre = model.layer_input(images.view(len(images), -1))           # (N, 256)
    active = (pre > 0).any(dim=0)                                       # (256,): ever active
    return [unit for unit in range(len(active)) if not active[unit]]


def plot_first_layers(networks, dead):
    """Each network's 256 first-layer weight vectors as 28x28 images in a 16x16 grid, each scaled
    to its own largest |weight| (red positive, blue negative), its dead units framed in black."""
    fig = Figure(figsize=(14, 7.4), layout="constrained")
    for ax, (name, model) in zip(fig.subplots(ncols=2), networks.items()):
        weights = model.layer_input.weight.detach().cpu().view(256, 28, 28)
        scaled = weights / weights.abs().amax(dim=(1, 2), keepdim=True)   # each in [-1, 1]
        grid = torch.full((16 * 29 + 1, 16 * 29 + 1), float("nan"))       # NaN: the white gaps
        for unit in range(256):
            row, col = divmod(unit, 16)
            grid[1 + 29 * row:29 * (row + 1), 1 + 29 * col:29 * (col + 1)] = scaled[unit]
        ax.imshow(grid.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        for unit in dead[name]:
            row, col = divmod(unit, 16)
            ax.add_patch(Rectangle((29 * col, 29 * row), 29, 29, fill=False, edgecolor="black",
                                   linewidth=1.5))
        ax.set_title(f"{name}: {len(dead[name])} of 256 units dead (framed)")
        ax.set_axis_off()
    fig.suptitle("The first layer's 256 weight vectors as 28x28 images, each scaled to its "
                 "largest |weight| (red: positive, blue: negative)")
    return fig


# ----------------------------------------------------------------------------------------- pictures

def describe(args, dropout):
    """The settings that shape a run, for a picture's title."""
    parts = [f"dropout {dropout}" if not args.dropout_per_layer else
             f"dropout per layer {' '.join(map(str, args.dropout_per_layer))}"]
    parts += ["model.eval() forgotten"] * args.no_eval
    parts += [f"{args.train_size} training images"] * bool(args.train_size)
    parts += [f"mixup {args.mixup}"] * bool(args.mixup)
    parts += [f"augment {args.augment}"] * (args.augment != "none")
    parts += [f"AdamW weight decay {args.weight_decay}"] * bool(args.weight_decay)
    parts += [f"{args.schedule} lr {args.lr}" if args.schedule != "none" else f"lr {args.lr}"]
    text = ", ".join(parts)
    return text[0].upper() + text[1:]


def plot_sweep(runs, chosen):
    """Left: each p's validation loss per epoch, the mean over the seeds with a band of one
    standard deviation (dashed: its training loss); its lowest marked. Right: the lowest and the
    final validation loss, and the accuracy at the lowest, against p, with their spread."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    curves, summary = fig.subplots(ncols=2)
    for i, (p, rs) in enumerate(runs.items()):
        color = f"C{i}"
        n = min(r.epochs for r in rs.values())             # the epochs every seed finished
        val = [mean_sd(r.test_losses[e] for r in rs.values()) for e in range(n)]
        train = [mean_sd(r.train_losses[e] for r in rs.values())[0] for e in range(n)]
        epochs = range(1, n + 1)
        mean = [m for m, _ in val]
        best = 1 + mean.index(min(mean))
        name = f"p={p}" + " (chosen)" * (p == chosen)
        curves.plot(epochs, mean, "-", color=color,
                    label=f"{name}: the mean curve lowest, {min(mean):.3f} at epoch {best}")
        curves.fill_between(epochs, [m - sd for m, sd in val], [m + sd for m, sd in val],
                            color=color, alpha=0.2, linewidth=0)
        curves.plot(epochs, train, "--", color=color, alpha=0.6, linewidth=1)
        curves.plot(best, min(mean), "o", color=color, markersize=7)
    seeds = max(map(len, runs.values()))
    band = f"\nband: ± one standard deviation over {seeds} seeds" if seeds > 1 else ""
    curves.set(xlabel="epoch", ylabel="loss per image (NLL)",
               title=f"Validation loss per epoch (dashed: training loss){band}")
    curves.title.set_fontsize(9)
    ps = list(runs)
    for figure, style, color, label in (
            (lowest, "o-", "tab:blue", "lowest validation loss"),
            (lambda r: r.test_losses[-1], "s--", "tab:red", "final validation loss")):
        stats = [mean_sd(map(figure, rs.values())) for rs in runs.values()]
        summary.errorbar(ps, [m for m, _ in stats], yerr=[sd for _, sd in stats], fmt=style,
                         color=color, capsize=4, label=label)
    summary.set(xlabel="dropout p", ylabel="validation loss per image",
                title="Each p: its lowest and final validation loss, and the accuracy"
                      + ("\n(mean ± one standard deviation over the seeds)" if seeds > 1 else ""))
    summary.title.set_fontsize(9)
    accuracy = summary.twinx()
    stats = [mean_sd(r.accuracies[r.best_epoch - 1] for r in rs.values()) for rs in runs.values()]
    accuracy.errorbar(ps, [m for m, _ in stats], yerr=[sd for _, sd in stats], fmt="^:",
                      color="tab:green", capsize=4,
                      label="validation accuracy at the lowest loss")
    accuracy.set_ylabel("validation accuracy", color="tab:green")
    lines = summary.get_legend_handles_labels()[0] + accuracy.get_legend_handles_labels()[0]
    summary.legend(lines, [line.get_label() for line in lines], fontsize=8, ncol=3,
                   loc="upper center", bbox_to_anchor=(0.5, -0.12))
    for ax in (curves, summary):
        ax.grid(alpha=0.3)
    curves.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    cli.run_script(main)    # as its own process: first the speed settings of plumbing/speed.py

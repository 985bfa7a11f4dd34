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
import sys
from functools import partial

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch import optim
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

import common
from common import CLASSES, FashionNeuralNetwork
from plumbing import cli, errors, saving


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = cli.get_device(args.device)
    out_dir = saving.prepare_out_dir(args.out_dir)
    print(f"Settings: dropout {args.sweep_dropout or args.dropout}, epochs {args.epochs}, "
          f"batch size {args.batch_size}, lr {args.lr}, weight decay {args.weight_decay} "
          f"({'AdamW' if args.weight_decay else 'Adam'}), schedule {args.schedule}, "
          f"augment {args.augment}, mixup {args.mixup}, validation split {args.val_split}, "
          f"final fit {args.final_fit}, seed {args.seed}, device {device}")
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size,
                                               download=not args.no_download)
    if args.sweep_dropout:
        return sweep(args, trainloader, testloader, device, out_dir)

    fitloader, valloader, validated_on = trainloader, testloader, "test"    # as in the tutorial
    if args.val_split:
        fitloader, valloader = hold_out(trainloader, args)
        validated_on = "validation"
    model, run = fit(args, args.dropout, fitloader, valloader, validated_on, device)
    if args.val_split and run.epochs and not run.stopped and not args.final_fit:
        # The epoch was chosen on the validation set; now, once, the test set judges that choice.
        model.load_state_dict(run.weights[run.best_epoch])
        run.test_of_best = test_once(model, testloader, device,
                                     f"with the weights of epoch {run.best_epoch}")
    fig = None
    if run.epochs:
        mixed = " (on mixed images)" * bool(args.mixup)
        fig = common.plot_losses({"beyond": run}, f"{describe(args, args.dropout)}\n"
                                 f"training{mixed} and validation loss")
    saving.save_run("beyond", run, args.dropout, out_dir, plot=fig)     # the four files, one set
    common.print_summary(run, cli.divergence_advice(args))
    if args.final_fit and run.epochs and not run.stopped:
        return final_fit(args, args.dropout, run.best_epoch, trainloader, testloader, device,
                         out_dir)
    if args.final_fit:
        print(f"No final fit: the first run did not end{earlier_final(out_dir)}.", file=sys.stderr)
    return cli.exit_status(run)


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
                             "Beta(ALPHA, ALPHA) per batch, their labels mixed alike; 0 is off")
    parser.add_argument("--sweep-dropout", type=cli.probability, nargs="+", metavar="P",
                        help="with --val-split: one run per dropout value, the other settings as "
                             "given; choose p and epoch by the lowest validation loss")
    args = parser.parse_args(argv)
    for flag in ("final_fit", "sweep_dropout"):
        if getattr(args, flag) and not args.val_split:
            parser.error(f"argument --{flag.replace('_', '-')}: needs --val-split N (10000 is "
                         "a good choice), to choose on held-out training images")
    if 0 < args.mixup < 0.001:
        parser.error(f"argument --mixup: {args.mixup} is too small to draw proportions from; use 0 "
                     "(off) or a number of at least 0.001")
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
    model = FashionNeuralNetwork(dropout=dropout).to(device)
    # A mixed image's label is two probabilities, which NLLLoss cannot take. CrossEntropyLoss can;
    # its log_softmax leaves our log-probabilities as they are, so on labels it is NLLLoss.
    loss_function = nn.CrossEntropyLoss() if args.mixup else nn.NLLLoss()
    if args.weight_decay:       # AdamW shrinks the weights directly, beside Adam's scaled steps
        optimizer = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                fused=True)
    else:
        optimizer = optim.Adam(model.parameters(), lr=args.lr, fused=True)
    if args.augment != "none":
        trainloader = Augmented(trainloader, shift=2, flip=args.augment == "shift+flip")
    if args.mixup:
        trainloader = Mixup(trainloader, args.mixup)
    if args.schedule == "cosine":
        # As long as --epochs, also in a shorter final fit; stepped after each optimizer.step().
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                         T_max=args.epochs * len(trainloader))
        optimizer.register_step_post_hook(lambda *_: scheduler.step())
    run = common.train(model, trainloader, valloader, loss_function, optimizer,
                       epochs or args.epochs, device, validated_on=validated_on)
    return model, run


def final_fit(args, dropout, epochs, trainloader, testloader, device, out_dir):
    """A new network trained from scratch on all the training images for the chosen number of
    epochs, tested once and saved as beyond_final.pt. Returns the exit status."""
    print(f"Final fit: a new network on all {len(trainloader.dataset)} training images for the "
          f"{plural(epochs, 'epoch')} chosen (its validation images are now training images too, "
          "so their numbers judge nothing).")
    _, valloader = hold_out(trainloader, args)                        # the same images as before
    model, final = fit(args, dropout, trainloader, valloader, "validation", device, epochs=epochs)
    if final.stopped:
        print(f"The final fit stopped after {final.epochs} of its {plural(epochs, 'epoch')}: there "
              f"is no final network to test (the first run is saved above){earlier_final(out_dir)}"
              ".", file=sys.stderr)
        if final.stopped == "diverged":
            print(f"error: the final fit diverged at epoch {final.epochs + 1} "
                  f"{cli.divergence_advice(args)}.", file=sys.stderr)
        return cli.exit_status(final)
    metrics = {"epoch": epochs, **test_once(model, testloader, device,
                                            f"with the final fit's {plural(epochs, 'epoch')}")}
    path = out_dir / "beyond_final.pt"
    saving.save_checkpoint(path, model.state_dict(), dropout, metrics)
    print(f"Saved the final fit's network to {path}")
    return 0


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
    """One run per dropout value on the validation split, each seeded alike; the table and
    dropout_sweep.png; the choice (lowest validation loss); with --final-fit, the test set once."""
    fitloader, valloader = hold_out(trainloader, args)
    runs = {}
    for i, p in enumerate(args.sweep_dropout, 1):
        print(f"Dropout {p}:")
        torch.manual_seed(args.seed)       # each run as if alone: the same command, the same table
        _, run = fit(args, p, fitloader, valloader, "validation", device)
        if run.epochs:
            runs[p] = run
        if run.stopped:
            break
    if not runs:
        print("No epoch was completed: nothing to draw.")
        return cli.exit_status(run)
    # The gap: the final validation loss above the final training loss (overfitting when large).
    print(f"\n{'dropout':>7} {'lowest val loss':>15} {'at epoch':>8} {'final val loss':>14} "
          f"{'final gap':>9} {'val accuracy at lowest':>22}")
    for p, r in runs.items():
        best = r.best_epoch
        print(f"{p:>7} {r.test_losses[best - 1]:>15.4f} {best:>8} {r.test_losses[-1]:>14.4f} "
              f"{r.test_losses[-1] - r.train_losses[-1]:>+9.3f} {r.accuracies[best - 1]:>22.3f}")
    chosen = None      # the lowest validation loss of all, from a sweep that ran to its end
    if not run.stopped:
        chosen = min(runs, key=lambda p: runs[p].test_losses[runs[p].best_epoch - 1])
    table = {"runs": {str(p): saving.history(r) for p, r in runs.items()},
             "chosen": None if chosen is None else {"dropout": chosen,
                                                    "epochs": runs[chosen].best_epoch}}
    fig = plot_sweep(runs, chosen, args.epochs)
    saving.write_set({out_dir / "dropout_sweep.json": lambda f: f.write(saving.json_bytes(table)),
                      out_dir / "dropout_sweep.png": partial(saving.write_figure, fig)})
    print(f"Wrote {out_dir / 'dropout_sweep.png'} and {out_dir / 'dropout_sweep.json'}")
    if run.stopped:
        finished, drawn = [str(q) for q in runs if q != p], []
        if finished:
            drawn.append(f"its finished run{'s' * (len(finished) > 1)} (dropout "
                         f"{', '.join(finished)})")
        if run.epochs:
            drawn.append(f"the {plural(run.epochs, 'epoch')} of that run")
        print(f"The sweep stopped during its run {i} of {len(args.sweep_dropout)} (dropout {p}), "
              f"after {run.epochs} of its {plural(args.epochs, 'epoch')}: drawn are "
              f"{' and '.join(drawn)}; no choice made.", file=sys.stderr)
        if run.stopped == "diverged":
            print(f"error: the run of dropout {p} diverged at epoch {run.epochs + 1} "
                  f"{cli.divergence_advice(args)}.", file=sys.stderr)
        return cli.exit_status(run)
    epochs = runs[chosen].best_epoch
    print(f"Chosen by the lowest validation loss: dropout {chosen}, {plural(epochs, 'epoch')}.")
    if args.final_fit:
        return final_fit(args, chosen, epochs, trainloader, testloader, device, out_dir)
    return 0


# ----------------------------------------------------------------------------- the validation split

def hold_out(trainloader, args):
    """--val-split N training images split off to validate on, the same ones for the same seed:
    a trainloader over the rest (shuffled) and a loader over them (in order). Both draw their
    batches from the training images where they are: no copy of the set is made."""
    dataset = trainloader.dataset
    if not 0 < args.val_split < len(dataset):
        errors.fail(f"--val-split {args.val_split} must leave training images: use a number from "
                    f"1 to {len(dataset) - 1}.")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    val, train = order[:args.val_split], order[args.val_split:]
    return (part_loader(Part(dataset, train), args.batch_size, shuffle=True),
            part_loader(Part(dataset, val), args.batch_size, shuffle=False))


class Part(Dataset):
    """Some images of a TensorDataset, by index: a batch is copied out of the whole set when it is
    drawn, the same images in the same order as from a copy of that part."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, positions):
        return self.dataset[self.indices[positions]]

    @property
    def tensors(self):
        """(images, labels) of the part, as TensorDataset.tensors: a copy, made when asked for."""
        return self.dataset[self.indices]


def part_loader(part, batch_size, shuffle):
    """common.make_loader's DataLoader, over a Part."""
    sampler = RandomSampler(part) if shuffle else SequentialSampler(part)
    return DataLoader(part, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      batch_size=None)


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


# ----------------------------------------------------------------------------------------- pictures

def describe(args, dropout):
    """The settings that shape a run, for a picture's title."""
    parts = [f"dropout {dropout}"]
    parts += [f"mixup {args.mixup}"] * bool(args.mixup)
    parts += [f"augment {args.augment}"] * (args.augment != "none")
    parts += [f"AdamW weight decay {args.weight_decay}"] * bool(args.weight_decay)
    parts += [f"{args.schedule} lr {args.lr}" if args.schedule != "none" else f"lr {args.lr}"]
    text = ", ".join(parts)
    return text[0].upper() + text[1:]


def plot_sweep(runs, chosen, planned):
    """Left: each p's validation loss per epoch (dashed: its training loss), its lowest marked; a
    run stopped before its `planned` epochs says so. Right: the lowest and the final validation
    loss, and the accuracy at the lowest, against p."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    curves, summary = fig.subplots(ncols=2)
    colors = [f"C{i}" for i in range(len(runs))]
    for (p, r), color in zip(runs.items(), colors):
        epochs = range(1, r.epochs + 1)
        best = r.best_epoch
        name = f"p={p}" + " (chosen)" * (p == chosen)
        name += f" (stopped after {r.epochs} of {planned} epochs)" * (r.epochs < planned)
        curves.plot(epochs, r.test_losses, "-", color=color,
                    label=f"{name}: lowest {r.test_losses[best - 1]:.3f} at epoch {best}")
        curves.plot(epochs, r.train_losses, "--", color=color, alpha=0.6, linewidth=1)
        curves.plot(best, r.test_losses[best - 1], "o", color=color, markersize=7)
    curves.set(xlabel="epoch", ylabel="loss per image (NLL)",
               title="Validation loss per epoch (dashed: training loss); dots: the lowest")
    ps = list(runs)
    lowest = [r.test_losses[r.best_epoch - 1] for r in runs.values()]
    final = [r.test_losses[-1] for r in runs.values()]
    summary.plot(ps, lowest, "o-", color="tab:blue", label="lowest validation loss")
    summary.plot(ps, final, "s--", color="tab:red", label="final validation loss")
    summary.set(xlabel="dropout p", ylabel="validation loss per image",
                title="Each p: its lowest and its final validation loss, and the accuracy")
    accuracy = summary.twinx()
    accuracy.plot(ps, [r.accuracies[r.best_epoch - 1] for r in runs.values()], "^:",
                  color="tab:green", label="validation accuracy at the lowest loss")
    accuracy.set_ylabel("validation accuracy", color="tab:green")
    lines = summary.get_legend_handles_labels()[0] + accuracy.get_legend_handles_labels()[0]
    summary.legend(lines, [line.get_label() for line in lines], fontsize=8, ncol=3,
                   loc="upper center", bbox_to_anchor=(0.5, -0.12))
    for ax in (curves, summary):
        ax.grid(alpha=0.3)
    curves.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    cli.run_script(main)

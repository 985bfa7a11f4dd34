"""Step 3 of the tutorial, "Regularization" to "Conclusion": the same network with dropout.

    python 03_dropout.py [--dropout 0.2] [--epochs 30] [--seed 0]

Trains the network with dropout p=0.2 after each hidden layer (the tutorial's
FashionNeuralNetworkD), validating in model.eval() mode and training in model.train() mode; watch
the two losses stay together. Writes dropout_loss.png, dropout_history.json, dropout.pt and
dropout_best.pt; then, when 02_baseline.py has run, the conclusion: baseline_vs_dropout.png, and
confidence.png, how sure each network is against how often it is right.
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # finds plumbing/ under python -I
from plumbing import cli, errors, saving, speed    # first of all: see plumbing/__init__.py

import torch
from matplotlib.figure import Figure
from torch import nn
from torch import optim

import common
from common import FashionNeuralNetwork, Run, train


def main(argv=None):
    parser = cli.make_training_parser(__doc__)
    cli.add_dropout_arg(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = cli.get_device(args.device)
    out_dir = saving.prepare_out_dir(args.out_dir)
    print(f"Settings: dropout {args.dropout}, epochs {args.epochs}, batch size {args.batch_size}, "
          f"lr {args.lr}, seed {args.seed}, device {device}")
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size,
                                               download=not args.no_download)

    # ----------------------------------------------------------------------------- "Regularization"
    # Dropout zeroes each hidden unit with probability p (a fifth of them at the tutorial's 0.2) at
    # each training step, so that no unit can lean on a few others: the network learns what many
    # units agree on.

    # ------------------------------------------------------- "Define our new Network with Dropouts"
    # Instantiate the model: the tutorial's FashionNeuralNetworkD is our one class with dropout=0.2
    model = FashionNeuralNetwork(dropout=args.dropout).to(device)

    # ---------------------------------------------------------------- "Now let's train this model!"
    # Use Negative Log Likelihood as our loss function
    loss_function = nn.NLLLoss()
    # Use ADAM optimizer; fused (ours) updates all weights in one kernel, where the device has one
    optimizer = optim.Adam(model.parameters(), lr=args.lr, fused=cli.fused_adam(device))
    # Train the model 30 cycles. common.train() is the tutorial's loop: model.eval() turns dropout
    # off to validate, or the network would be judged with some of its units missing;
    # model.train() turns it back on.
    epochs = args.epochs
    with speed.threads_chosen(model, optimizer, device):    # ours, for speed, as in 02
        run = train(model, trainloader, testloader, loss_function, optimizer, epochs, device)

    # ----------------------------------------------------------------- "Plot the graph here", again
    fig = None
    if run.epochs:                  # a Ctrl-C during the first epoch leaves nothing to draw
        title = f"With dropout p={args.dropout}: training and validation loss"
        fig = common.plot_losses({"dropout": run}, title)
    # Ours: the history, the checkpoints and the plot (dropout_loss.png), saved as one set
    saving.save_run("dropout", run, args.dropout, out_dir, plot=fig)
    common.print_summary(run, cli.divergence_advice(args))

    # --------------------------------------------------------------------------------- "Conclusion"
    if run.epochs:      # the lesson in two pictures, each drawn when 02_baseline.py's files exist
        pictures = {"baseline_vs_dropout.png": compare_with_baseline(run, args.dropout, out_dir),
                    "confidence.png": compare_confidence(out_dir, testloader, device)}
        # Ours: the two written as one set; one that could not be drawn is named if it is there
        saving.save_figures({out_dir / name: picture for name, picture in pictures.items()
                             if picture})
        for name, picture in pictures.items():
            if picture:
                print(f"Wrote {out_dir / name}")
            elif (out_dir / name).exists():
                print(f"The {name} in {out_dir} is an earlier run's.")
    return cli.EXIT_STATUS[run.stopped]


def compare_with_baseline(run, dropout, out_dir):
    """baseline_vs_dropout.png: 02_baseline.py's losses beside this run's: the lesson, drawn.
    Returns the figure, or None when 02_baseline.py's history cannot be read."""
    try:
        baseline = Run(**saving.read_history(out_dir / "baseline_history.json"))
    except errors.BadFile as e:
        print(f"baseline_vs_dropout.png not written: {e} (run 02_baseline.py first).")
        return None
    runs = {"without dropout": baseline, f"dropout {dropout}": run}
    title = "Without and with dropout: training and validation loss"
    for name, r in runs.items():
        print(f"{name.capitalize() + ':':<17} final validation loss {r.test_losses[-1]:.3f}, "
              f"{r.validated_on} accuracy {r.accuracies[-1]:.3f} (epoch {r.epochs})")
    return common.plot_losses(runs, title)


def compare_confidence(out_dir, testloader, device):
    """What overfitting spoils is the network's confidence: the calibration of the last epochs of
    02_baseline.py and 03_dropout.py on the test set, printed and drawn in confidence.png.
    Returns the figure, or None when a checkpoint cannot be used."""
    images, labels = testloader.dataset.tensors
    stats = {}
    for name, stem in (("without dropout", "baseline"), ("dropout", "dropout")):
        filename = f"{stem}.pt"
        if not (out_dir / filename).is_file():
            print(f"confidence.png not written: {filename} is not in {out_dir} "
                  "(run 02_baseline.py first).")
            return None
        try:
            model, checkpoint = saving.load_checkpoint(out_dir / filename, FashionNeuralNetwork,
                                                       device)
        except errors.BadFile as e:
            print(f"confidence.png not written: {e}")
            return None
        with torch.no_grad():
            log_ps = model(images.to(device)).cpu()
        epoch = checkpoint["epoch"] if checkpoint["epoch"] is not None else "unknown"
        stats[f"{name} (epoch {epoch})"] = calibration(log_ps, labels)
    width = max(map(len, stats))
    print(f"{'test set':<{width}} {'accuracy':>8} {'confidence':>10} {'ECE':>6} {'loss':>6} = "
          f"{'right':>5} + {'wrong':>5} (of which sure and wrong: images, loss)")
    for name, c in stats.items():
        print(f"{name:<{width}} {c['accuracy']:>8.3f} {c['confidence']:>10.3f} {c['ece']:>6.3f} "
              f"{c['loss']:>6.3f} = {c['loss_right']:>5.3f} + {c['loss_wrong']:>5.3f} "
              f"({c['sure_wrong']} of {c['wrong']} wrong with over 90% confidence: "
              f"{c['loss_sure_wrong']:.3f})")
    return plot_confidence(stats)


def calibration(log_ps, labels, bins=15):
    """How sure the network is against how often it is right: accuracy, mean confidence, the
    expected calibration error (ECE: 15 equal-width confidence bins, weighted by count) and the
    loss per image, split into what right and wrong answers add to it."""
    ps = torch.exp(log_ps)
    top_p, top_class = ps.topk(1, dim=1)
    confidence, right = top_p.view(-1), top_class.view(-1) == labels
    which = (confidence * bins).long().clamp(max=bins - 1)                # the bin of each answer
    count = torch.bincount(which, minlength=bins)
    bin_accuracy = torch.bincount(which, weights=right.float(), minlength=bins) / count.clamp(min=1)
    bin_confidence = torch.bincount(which, weights=confidence, minlength=bins) / count.clamp(min=1)
    loss = -log_ps.gather(1, labels.view(-1, 1)).view(-1)                 # each image's NLL
    n = len(labels)
    sure_wrong = ~right & (confidence > 0.9)
    return {"accuracy": right.float().mean().item(), "confidence": confidence.mean().item(),
            "ece": (count / n * (bin_accuracy - bin_confidence).abs()).sum().item(),
            "loss": loss.mean().item(), "loss_right": loss[right].sum().item() / n,
            "loss_wrong": loss[~right].sum().item() / n, "wrong": (~right).sum().item(),
            "sure_wrong": sure_wrong.sum().item(),
            "loss_sure_wrong": loss[sure_wrong].sum().item() / n,
            "count": count, "bin_accuracy": bin_accuracy, "bin_confidence": bin_confidence,
            "wrong_confidence": confidence[~right]}


def plot_confidence(stats):
    """A reliability diagram (accuracy against confidence, per bin) and the confidence of the
    wrong answers."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    reliability, wrong = fig.subplots(ncols=2)
    reliability.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    for (name, c), color in zip(stats.items(), ("tab:blue", "tab:orange")):
        used = c["count"] > 0
        reliability.plot(c["bin_confidence"][used].tolist(), c["bin_accuracy"][used].tolist(), "o-",
                         color=color,
                         label=f"{name}: ECE {c['ece']:.3f}, accuracy {c['accuracy']:.3f}")
        wrong.hist(c["wrong_confidence"].tolist(), bins=15, range=(0, 1), histtype="step",
                   linewidth=2, color=color,
                   label=f"{name}: {c['wrong']} wrong, {c['sure_wrong']} of them over 90% sure")
    reliability.set(xlabel="confidence (probability of the predicted class)", ylabel="accuracy",
                    title="Reliability on the test set: below the diagonal = overconfident",
                    xlim=(0, 1), ylim=(0, 1))
    wrong.set(xlabel="confidence of the wrong answers", ylabel="test images",
              title="How sure the wrong answers are")
    for ax in (reliability, wrong):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return fig


if __name__ == "__main__":
    cli.run_script(main)    # as its own process: first the speed settings of plumbing/speed.py

"""Step 3 of the tutorial, "Regularization" to "Now let's train this model!": the same network with dropout.

    python 03_dropout.py [--dropout 0.2] [--epochs 30] [--seed 0]

Trains the network with dropout p=0.2 after each hidden layer (the tutorial's FashionNeuralNetworkD),
validating in model.eval() mode and training in model.train() mode; watch the two losses stay
together. Writes dropout_history.json, dropout_loss.png, dropout.pt and dropout_best.pt, and, when
02_baseline.py has run, baseline_vs_dropout.png, the lesson in one picture, and confidence.png, how
sure each network is against how often it is right.

Beyond the tutorial, all off by default: --val-split (and --final-fit), --schedule, --augment,
--mixup and --weight-decay.
"""
import sys

import torch
from matplotlib.figure import Figure
from torch import nn
from torch import optim

import common
from common import FashionNeuralNetwork, train


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = common.get_device(args.device)
    out_dir = common.prepare_out_dir(args.out_dir)
    print(f"Settings: dropout {args.dropout}, epochs {args.epochs}, batch size {args.batch_size}, lr {args.lr}, "
          f"weight decay {args.weight_decay}, schedule {args.schedule}, augment {args.augment}, "
          f"mixup {args.mixup}, validation split {args.val_split}, seed {args.seed}, device {device}")
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size, download=not args.no_download)

    # ------------------------------------------------------------------ "Define our new Network with Dropouts"
    # Instantiate the model: the tutorial's FashionNeuralNetworkD is our one class with dropout=0.2
    model = FashionNeuralNetwork(dropout=args.dropout).to(device)

    # ------------------------------------------------------------------ "Now let's train this model!"
    # Use Negative Log Likelihood as our loss function
    loss_function = nn.NLLLoss()
    # --mixup, beyond the tutorial: a mixed image's label is two probabilities, which NLLLoss cannot take.
    # CrossEntropyLoss can; its log_softmax leaves our log-probabilities as they are, so on labels it is NLLLoss.
    if args.mixup:
        loss_function = nn.CrossEntropyLoss()
    # Use ADAM optimizer; fused=True (ours) updates all weights in one kernel: the same maths, faster
    if args.weight_decay == 0:
        optimizer = optim.Adam(model.parameters(), lr=args.lr, fused=True)
    else:   # --weight-decay, beyond the tutorial: real L2 regularisation, decoupled from Adam's scaling
        optimizer = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)
    # Train the model 30 cycles. common.train() is the tutorial's loop: model.eval() turns dropout
    # off to validate, or the network would be judged with a fifth of its units missing; model.train()
    # turns it back on.
    epochs = args.epochs
    if not beyond_the_tutorial(args):
        run = train(model, trainloader, testloader, loss_function, optimizer, epochs, device)
    else:
        run = train_beyond_the_tutorial(args, model, trainloader, testloader, loss_function, optimizer, device)

    # ------------------------------------------------------------------ "Plot again the graph and see the difference"
    title = f"With dropout p={args.dropout}: training and validation loss"
    if args.mixup:
        title = f"With dropout p={args.dropout}, mixup {args.mixup}: training (mixed images) and validation loss"
    common.save_run("dropout", run, args.dropout, out_dir, title)
    common.print_summary(run)
    baseline = common.read_history(out_dir / "baseline_history.json")
    if baseline and run.epochs and baseline.validated_on == run.validated_on:      # validated on the same set
        path = out_dir / "baseline_vs_dropout.png"
        runs = {"without dropout": baseline, f"dropout {args.dropout}{mixup_label(args)}": run}
        common.save_figure(common.plot_losses(runs, "Without and with dropout: training and validation loss"), path)
        for name, r in runs.items():
            print(f"{name.capitalize() + ':':<17} final validation loss {r.test_losses[-1]:.3f}, "
                  f"{r.validated_on} accuracy {r.accuracies[-1]:.3f} (epoch {r.epochs})")
        print(f"Wrote {path}")
    if run.epochs and not args.val_split:
        # Beyond the tutorial: what overfitting spoils is the network's confidence (confidence.png).
        compare_confidence(out_dir, testloader, device, f"dropout{mixup_label(args)}")
    if args.final_fit and run.epochs and not run.stopped:
        return final_fit(args, run.best_epoch, trainloader, testloader, loss_function, device, out_dir)
    return run.exit_status


# ============================================================================= beyond the tutorial

def parse_args(argv):
    parser = common.make_training_parser(__doc__)
    parser.add_argument("--dropout", type=common.probability, default=0.2,
                        help="probability of zeroing each hidden unit while training")
    beyond = parser.add_argument_group("beyond the tutorial (with --weight-decay above)")
    beyond.add_argument("--val-split", type=common.non_negative_int, default=0,
                        help="training images held out to validate on, so the test set is touched once, at "
                             "the end; 0 validates on the test set, as the tutorial does")
    beyond.add_argument("--schedule", choices=("none", "cosine"), default="none",
                        help="learning rate schedule: cosine decays it to zero over the run, batch by batch")
    beyond.add_argument("--augment", choices=("none", "shift", "shift+flip"), default="none",
                        help="random shifts of up to 2 pixels (and left-right mirroring) of the training batches")
    beyond.add_argument("--mixup", type=common.non_negative_float, default=0.0, metavar="ALPHA",
                        help="train on pairs of images mixed in a proportion drawn from Beta(ALPHA, ALPHA) "
                             "per batch, with their labels mixed alike; 0 is off")
    beyond.add_argument("--final-fit", action="store_true",
                        help="with --val-split: once the epoch is chosen, train again from scratch on all the "
                             "training images for that many epochs, and test that network once")
    args = parser.parse_args(argv)
    if args.final_fit and not args.val_split:
        parser.error("argument --final-fit: needs --val-split N, to choose the number of epochs on")
    if 0 < args.mixup < 0.001:
        parser.error(f"argument --mixup: {args.mixup} is too small to draw proportions from; use 0 (off) or a "
                     "number of at least 0.001")
    return args


def mixup_label(args):
    return f", mixup {args.mixup}" if args.mixup else ""


def beyond_the_tutorial(args):
    return args.val_split or args.schedule != "none" or args.augment != "none" or args.mixup


def train_beyond_the_tutorial(args, model, trainloader, testloader, loss_function, optimizer, device):
    """The same training with a validation split, a learning rate schedule, or augmented or mixed batches."""
    valloader, validated_on = testloader, "test"
    if args.val_split:
        trainloader, valloader = common.hold_out(trainloader, args.val_split, args.seed, args.batch_size)
        validated_on = "validation"
    trainloader, scheduler = with_flags(args, trainloader, optimizer)
    run = train(model, trainloader, valloader, loss_function, optimizer, args.epochs, device,
                scheduler=scheduler, validated_on=validated_on)
    if args.val_split and run.epochs and not run.stopped and not args.final_fit:
        # The epoch was chosen on the validation set; now, once, the test set judges that choice.
        model.load_state_dict(run.state(run.best_epoch))
        test_loss, test_accuracy = common.evaluate(model, *testloader.dataset.tensors, device)
        run.test_of_best = {"test_loss": test_loss, "test_accuracy": test_accuracy}
        print(f"Test set, once, with the weights of epoch {run.best_epoch}: "
              f"loss {test_loss:.3f}, accuracy {test_accuracy:.3f}")
    return run


def with_flags(args, trainloader, optimizer):
    """trainloader with --augment and --mixup, and the --schedule stepped after each batch; as train()'s arguments."""
    if args.augment != "none":
        trainloader = common.Augmented(trainloader, shift=2, flip=args.augment == "shift+flip")
    if args.mixup:
        trainloader = common.Mixup(trainloader, args.mixup)
    scheduler = None
    if args.schedule == "cosine":
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(trainloader))
    return trainloader, scheduler


def final_fit(args, epochs, trainloader, testloader, loss_function, device, out_dir):
    """After the first run is saved: a new network trained from scratch on all the training images for the
    chosen number of epochs, with the same settings and a schedule as long as the first run's, tested once
    and saved as dropout_final.pt. Returns the exit status."""
    print(f"Final fit: a new network on all {len(trainloader.dataset)} training images for the {epochs} epochs "
          f"chosen (its validation images are now training images too, so their numbers judge nothing).")
    _, valloader = common.hold_out(trainloader, args.val_split, args.seed, args.batch_size)     # the same ones
    model = FashionNeuralNetwork(dropout=args.dropout).to(device)
    Optimizer = optim.AdamW if args.weight_decay else optim.Adam                 # as main() chose
    optimizer = Optimizer(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)
    trainloader, scheduler = with_flags(args, trainloader, optimizer)
    final = train(model, trainloader, valloader, loss_function, optimizer, epochs, device,
                  scheduler=scheduler, validated_on="validation")
    if final.stopped:
        print(f"The final fit stopped after {final.epochs} of its {epochs} epochs: there is no final network "
              "to test (the first run is saved above).", file=sys.stderr)
        return final.exit_status
    test_loss, test_accuracy = common.evaluate(model, *testloader.dataset.tensors, device)
    print(f"Test set, once, with the final fit's {epochs} epochs: loss {test_loss:.3f}, accuracy {test_accuracy:.3f}")
    path = out_dir / "dropout_final.pt"
    common.save_checkpoint(path, model.state_dict(), args.dropout,
                           {"epoch": epochs, "test_loss": test_loss, "test_accuracy": test_accuracy})
    print(f"Saved the final fit's network to {path}")
    return 0


# ============================================================================= beyond the tutorial: confidence

def calibration(log_ps, labels, bins=15):
    """How sure the network is against how often it is right: accuracy, mean confidence, the expected
    calibration error (ECE: 15 equal-width confidence bins, weighted by count) and the loss per image,
    split into what right and wrong answers add to it."""
    ps = torch.exp(log_ps)
    top_p, top_class = ps.topk(1, dim=1)
    confidence, right = top_p.view(-1), top_class.view(-1) == labels
    which = (confidence * bins).long().clamp(max=bins - 1)                  # the bin of each answer
    count = torch.bincount(which, minlength=bins)
    bin_accuracy = torch.bincount(which, weights=right.float(), minlength=bins) / count.clamp(min=1)
    bin_confidence = torch.bincount(which, weights=confidence, minlength=bins) / count.clamp(min=1)
    loss = -log_ps.gather(1, labels.view(-1, 1)).view(-1)                  # each image's NLL
    n = len(labels)
    return {"accuracy": right.float().mean().item(), "confidence": confidence.mean().item(),
            "ece": (count / n * (bin_accuracy - bin_confidence).abs()).sum().item(),
            "loss": loss.mean().item(), "loss_right": loss[right].sum().item() / n,
            "loss_wrong": loss[~right].sum().item() / n, "wrong": (~right).sum().item(),
            "sure_wrong": (~right & (confidence > 0.9)).sum().item(),
            "loss_sure_wrong": loss[~right & (confidence > 0.9)].sum().item() / n,
            "count": count, "bin_accuracy": bin_accuracy, "bin_confidence": bin_confidence,
            "wrong_confidence": confidence[~right]}


def compare_confidence(out_dir, testloader, device, name="dropout"):
    """Calibration of the last epochs of 02_baseline.py and 03_dropout.py on the test set: printed,
    and drawn in confidence.png."""
    paths = {"without dropout": out_dir / "baseline.pt", name: out_dir / "dropout.pt"}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing:
        print(f"confidence.png not written: {missing[0]} is not in {out_dir} (run 02_baseline.py first).")
        return
    images, labels = testloader.dataset.tensors
    stats = {}
    for name, path in paths.items():
        try:
            model, checkpoint = common.load_checkpoint(path, device)
        except SystemExit:                            # load_checkpoint has said what is wrong with the file
            print(f"confidence.png not written: {path} could not be loaded.")
            return
        with torch.no_grad():
            stats[f"{name} (epoch {checkpoint['epoch']})"] = calibration(model(images.to(device)).cpu(), labels)
    width = max(map(len, stats))
    print(f"{'test set':<{width}} {'accuracy':>8} {'confidence':>10} {'ECE':>6} {'loss':>6} = {'right':>5} + "
          f"{'wrong':>5} (of which sure and wrong: images, loss)")
    for name, c in stats.items():
        print(f"{name:<{width}} {c['accuracy']:>8.3f} {c['confidence']:>10.3f} {c['ece']:>6.3f} {c['loss']:>6.3f} = "
              f"{c['loss_right']:>5.3f} + {c['loss_wrong']:>5.3f} ({c['sure_wrong']} of {c['wrong']} wrong "
              f"with over 90% confidence: {c['loss_sure_wrong']:.3f})")
    path = out_dir / "confidence.png"
    common.save_figure(plot_confidence(stats), path)
    print(f"Wrote {path}")


def plot_confidence(stats):
    """A reliability diagram (accuracy against confidence, per bin) and the confidence of the wrong answers."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    reliability, wrong = fig.subplots(ncols=2)
    reliability.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    for (name, c), color in zip(stats.items(), ("tab:blue", "tab:orange")):
        used = c["count"] > 0
        reliability.plot(c["bin_confidence"][used], c["bin_accuracy"][used], "o-", color=color,
                         label=f"{name}: ECE {c['ece']:.3f}, accuracy {c['accuracy']:.3f}")
        wrong.hist(c["wrong_confidence"].tolist(), bins=15, range=(0, 1), histtype="step", linewidth=2,
                   color=color, label=f"{name}: {c['wrong']} wrong, {c['sure_wrong']} of them over 90% sure")
    reliability.set(xlabel="confidence (probability of the predicted class)", ylabel="accuracy",
                    title="Reliability on the test set: below the diagonal = overconfident", xlim=(0, 1), ylim=(0, 1))
    wrong.set(xlabel="confidence of the wrong answers", ylabel="test images", title="How sure the wrong answers are")
    for ax in (reliability, wrong):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return fig



if __name__ == "__main__":
    common.run_script(main)

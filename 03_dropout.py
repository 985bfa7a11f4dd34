"""Step 3 of the tutorial, "Regularization" to "Now let's train this model!": the same network with dropout.

    python 03_dropout.py [--dropout 0.2] [--epochs 30] [--seed 0]

Trains the network with dropout p=0.2 after each hidden layer (the tutorial's FashionNeuralNetworkD),
validating in model.eval() mode and training in model.train() mode; watch the two losses stay
together. Writes dropout_history.json, dropout_loss.png, dropout.pt and dropout_best.pt, and, when
02_baseline.py has run, baseline_vs_dropout.png: the lesson in one picture.

Beyond the tutorial, all off by default: --val-split, --schedule, --augment and --weight-decay.
"""
import torch
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
          f"validation split {args.val_split}, seed {args.seed}, device {device}")
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size, download=not args.no_download)

    # ------------------------------------------------------------------ "Define our new Network with Dropouts"
    # Instantiate the model: the tutorial's FashionNeuralNetworkD is our one class with dropout=0.2
    model = FashionNeuralNetwork(dropout=args.dropout).to(device)

    # ------------------------------------------------------------------ "Now let's train this model!"
    # Use Negative Log Likelihood as our loss function
    loss_function = nn.NLLLoss()
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
    common.save_run("dropout", run, args.dropout, out_dir,
                    f"With dropout p={args.dropout}: training and validation loss")
    common.print_summary(run)
    baseline = common.read_history(out_dir / "baseline_history.json")
    if baseline and run.epochs and baseline.validated_on == run.validated_on:      # validated on the same set
        path = out_dir / "baseline_vs_dropout.png"
        runs = {"without dropout": baseline, f"dropout {args.dropout}": run}
        common.save_figure(common.plot_losses(runs, "Without and with dropout: training and validation loss"), path)
        for name, r in runs.items():
            print(f"{name.capitalize() + ':':<17} final validation loss {r.test_losses[-1]:.3f}, "
                  f"{r.validated_on} accuracy {r.accuracies[-1]:.3f} (epoch {r.epochs})")
        print(f"Wrote {path}")
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
    return parser.parse_args(argv)


def beyond_the_tutorial(args):
    return args.val_split or args.schedule != "none" or args.augment != "none"


def train_beyond_the_tutorial(args, model, trainloader, testloader, loss_function, optimizer, device):
    """The same training with a validation split, a learning rate schedule or augmented batches."""
    valloader, validated_on = testloader, "test"
    if args.val_split:
        trainloader, valloader = common.hold_out(trainloader, args.val_split, args.seed, args.batch_size)
        validated_on = "validation"
    if args.augment != "none":
        trainloader = common.Augmented(trainloader, shift=2, flip=args.augment == "shift+flip")
    scheduler = None
    if args.schedule == "cosine":
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(trainloader))
    run = train(model, trainloader, valloader, loss_function, optimizer, args.epochs, device,
                scheduler=scheduler, validated_on=validated_on)
    if args.val_split and run.epochs:
        # The epoch was chosen on the validation set; now, once, the test set judges that choice.
        model.load_state_dict(run.state(run.best_epoch))
        test_loss, test_accuracy = common.evaluate(model, *testloader.dataset.tensors, device)
        run.test_of_best = {"test_loss": test_loss, "test_accuracy": test_accuracy}
        print(f"Test set, once, with the weights of epoch {run.best_epoch}: "
              f"loss {test_loss:.3f}, accuracy {test_accuracy:.3f}")
    return run


if __name__ == "__main__":
    common.run_script(main)

"""Step 3 of the tutorial, "Regularization" to "Now let's train this model!": the same network with dropout.

    python 03_dropout.py [--dropout 0.2] [--epochs 30] [--seed 0]

Trains FashionNeuralNetworkD (dropout p=0.2 after each hidden layer), switching model.eval()
for validation and model.train() back for training; watch the two losses stay together.
Writes dropout_history.json, dropout_loss.png, dropout.pt and dropout_best.pt, and, when
02_baseline.py has run, baseline_vs_dropout.png: the lesson in one picture.

Beyond the tutorial: --val-split holds out training images to choose the epoch on, so the test
set is touched once, at the end; --schedule cosine and --weight-decay train further.
"""
import torch
from torch import nn, optim

import common


def main(argv=None):
    parser = common.make_training_parser(__doc__)
    parser.add_argument("--dropout", type=common.probability, default=0.2,
                        help="probability of zeroing each hidden unit while training")
    parser.add_argument("--val-split", type=common.non_negative_int, default=0,
                        help="training images held out for validation; 0 validates on the test set, "
                             "as the tutorial does")
    parser.add_argument("--schedule", choices=("none", "cosine"), default="none",
                        help="learning rate schedule: cosine decays it to zero over the run, batch by batch")
    parser.add_argument("--augment", choices=("none", "shift", "shift+flip"), default="none",
                        help="random shifts of up to 2 pixels (and left-right mirroring) of the training batches")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = common.get_device(args.device)
    out_dir = common.prepare_out_dir(args.out_dir)
    print(f"Settings: dropout {args.dropout}, epochs {args.epochs}, batch size {args.batch_size}, lr {args.lr}, "
          f"weight decay {args.weight_decay}, schedule {args.schedule}, augment {args.augment}, "
          f"validation split {args.val_split}, seed {args.seed}, device {device}")
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size, download=not args.no_download)
    valloader, val_name = testloader, "test"                  # the tutorial validates on the test set
    if args.val_split:
        trainloader, valloader = common.hold_out(trainloader, args.val_split, args.seed)
        val_name = "validation"
    if args.augment != "none":
        trainloader = common.Augmented(trainloader, shift=2, flip=args.augment == "shift+flip")

    # ------------------------------------------------------------------ "Now let's train this model!"
    model = common.FashionNeuralNetwork(dropout=args.dropout).to(device)
    loss_function = nn.NLLLoss()
    optimizer = common.make_optimizer(model, args.lr, args.weight_decay, device)
    scheduler = None
    if args.schedule == "cosine":
        scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(trainloader))
    # train() runs model.train() for each training pass and model.eval() for validation: dropout
    # must be off when we measure, or the network is judged with a fifth of its units missing.
    run = common.train(model, trainloader, valloader, optimizer, loss_function, args.epochs, device,
                       scheduler=scheduler, val_name=val_name)

    if args.val_split and run.history:
        # The epoch was chosen on the validation set; now, once, the test set judges that choice.
        model.load_state_dict(run.best_state)
        run.best["test_loss"], run.best["test_accuracy"] = common.evaluate(model, testloader, loss_function, device)
        print(f"Test set, once, with the weights of epoch {run.best['epoch']}: "
              f"loss {run.best['test_loss']:.3f}, accuracy {run.best['test_accuracy']:.3f}")

    common.save_run("dropout", run, args.dropout, out_dir,
                    f"With dropout p={args.dropout}: training and validation loss")
    common.print_summary(run)

    baseline = common.read_history(out_dir / "baseline_history.json")
    if baseline and run.history and baseline.val_name == run.val_name:       # validated on the same set
        path = out_dir / "baseline_vs_dropout.png"
        common.save_figure(common.plot_losses({"without dropout": baseline, f"dropout {args.dropout}": run},
                                              "Without and with dropout: training and validation loss"), path)
        for name, r in (("Without dropout", baseline), (f"Dropout {args.dropout}", run)):
            last = r.history[-1]
            print(f"{name + ':':<17} final validation loss {last[f'{r.val_name}_loss']:.3f}, "
                  f"{r.val_name} accuracy {last[f'{r.val_name}_accuracy']:.3f} (epoch {last['epoch']})")
        print(f"Wrote {path}")
    return run.exit_status


if __name__ == "__main__":
    common.run_script(main)

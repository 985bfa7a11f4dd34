"""Step 2 of the tutorial, "Define the Neural Network" to "Overfitting": train without dropout.

    python 02_baseline.py [--epochs 30] [--lr 0.003] [--seed 0] [--device auto]

Checks the untrained network's output shape and accuracy, then trains it 30 epochs with
NLLLoss and Adam. Watch the validation loss turn upward while the training loss keeps
falling: overfitting. Writes baseline_history.json, baseline_loss.png, baseline.pt (last
epoch) and baseline_best.pt (lowest validation loss) to the output folder.
"""
import torch
from torch import nn

import common


def main(argv=None):
    args = common.make_training_parser(__doc__).parse_args(argv)
    torch.manual_seed(args.seed)
    device = common.get_device(args.device)
    out_dir = common.prepare_out_dir(args.out_dir)
    print(f"Settings: epochs {args.epochs}, batch size {args.batch_size}, lr {args.lr}, "
          f"weight decay {args.weight_decay}, seed {args.seed}, device {device}")
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size, download=not args.no_download)

    # ------------------------------------------------------------------ the untrained network
    # "Let's check if the output is in the correct shape"
    model = common.FashionNeuralNetwork().to(device)
    images, labels = next(iter(testloader))
    images, labels = images.to(device), labels.to(device)
    with torch.no_grad():
        log_ps = model(images)           # log-probabilities, (64, 10)
    ps = torch.exp(log_ps)               # probabilities: each row sums to 1
    print("Output shape:", ps.shape)

    # "Measuring the accuracy": topk(1) gives each image's most likely class, (64, 1); labels
    # is (64,), so view() it as (64, 1) before comparing, or == would broadcast to (64, 64).
    top_p, top_class = ps.topk(1, dim=1)
    print("Most likely class of the first 10 test images:", top_class[:10, :].view(-1).tolist())
    equals = top_class == labels.view(*top_class.shape)
    accuracy = torch.mean(equals.float())
    print(f"Accuracy on this batch of {len(labels)}: {accuracy.item():.1%}")
    _, test_accuracy = common.evaluate(model, testloader, nn.NLLLoss(), device)
    print(f"Accuracy on all {len(testloader.dataset)} test images: {test_accuracy:.1%} "
          "(random weights: about 1 in 10, chance)")

    # ------------------------------------------------------------------ "Train our model"
    model = common.FashionNeuralNetwork(dropout=0.0).to(device)
    loss_function = nn.NLLLoss()
    optimizer = common.make_optimizer(model, args.lr, args.weight_decay, device)
    run = common.train(model, trainloader, testloader, optimizer, loss_function, args.epochs, device)

    # The tutorial calls stopping at the lowest validation loss "L2 Regularization": that is
    # early stopping. L2 regularisation is weight decay (--weight-decay). baseline_best.pt keeps
    # the early-stopping weights, baseline.pt those of the last epoch.
    common.save_run("baseline", run, 0.0, out_dir, "Without dropout: training and validation loss")
    common.print_summary(run)
    return run.exit_status


if __name__ == "__main__":
    common.run_script(main)

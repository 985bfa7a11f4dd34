"""Step 2 of the tutorial, "Define the Neural Network" to "Overfitting": train without dropout.

    python 02_baseline.py [--epochs 30] [--lr 0.003] [--seed 0] [--device auto]

Checks an untrained network's output shape and accuracy, then trains a new one 30 epochs with
NLLLoss and Adam, as the tutorial does. Watch the validation loss turn upward while the training
loss keeps falling: overfitting. Writes baseline_loss.png, baseline_history.json, baseline.pt
(last epoch) and baseline_best.pt (lowest validation loss) to the output folder.
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # finds plumbing/ under python -I
from plumbing import cli, saving, speed    # first of all: see plumbing/__init__.py

import torch
from torch import nn
from torch import optim

import common
from common import FashionNeuralNetwork, train


def main(argv=None):
    args = cli.make_training_parser(__doc__).parse_args(argv)
    torch.manual_seed(args.seed)
    device = cli.get_device(args.device)
    out_dir = saving.prepare_out_dir(args.out_dir)
    print(f"Settings: epochs {args.epochs}, batch size {args.batch_size}, lr {args.lr}, "
          f"seed {args.seed}, device {device}")
    # "Lets import the Fashion-MNIST dataset": 01_data.py shows this step in full.
    trainloader, testloader = common.load_data(args.data_dir, args.batch_size,
                                               download=not args.no_download)

    # ------------------------------------------ "Let's check if the output is in the correct shape"
    # Instantiate the model
    model = FashionNeuralNetwork().to(device)
    # Get the images and labels from the test loader
    images, labels = next(iter(testloader))
    images, labels = images.to(device), labels.to(device)
    # Get the log probability prediction from our model (no gradients needed to look)
    with torch.no_grad():
        log_ps = model(images)
    # Normalize the probability by taking the exponent of the log-prob
    ps = torch.exp(log_ps)
    # Print out the size: (64, 10), one probability per class for each image
    print(ps.shape)

    # -------------------------------------------------------- "Measuring the accuracy of our model"
    top_p, top_class = ps.topk(1, dim=1)               # (64, 1): each image's most likely class
    # Print out the most likely classes for the first 10 examples
    print(top_class[:10, :])
    # labels is (64,): view() it as (64, 1), or == would broadcast to (64, 64)
    equals = top_class == labels.view(*top_class.shape)
    print("equals.shape:", equals.shape)
    accuracy = torch.mean(equals.type(torch.FloatTensor))
    print(f'Accuracy: {accuracy.item()*100}%')
    # Ours: one batch says little; the whole test set shows the untrained network is at chance.
    test_images, test_labels = testloader.dataset.tensors
    _, test_accuracy = common.evaluate(model, test_images, test_labels, device)
    print(f"Accuracy on all {len(test_labels)} test images: {test_accuracy:.1%} "
          "(random weights: about 1 in 10)")

    # ---------------------------------------------------------------------------- "Train our model"
    # Instantiate the model
    model = FashionNeuralNetwork().to(device)
    # Use Negative Log Likelihood as our loss function. (The tutorial's text says "CrossEntropy
    # loss": NLLLoss on log_softmax's output is the cross-entropy, in two steps.)
    loss_function = nn.NLLLoss()
    # Use ADAM optimizer; fused (ours) updates all weights in one kernel, where the device has one
    optimizer = optim.Adam(model.parameters(), lr=args.lr, fused=cli.fused_adam(device))
    # Train the model 30 cycles: common.train() is the tutorial's loop, in its order
    epochs = args.epochs
    # Ours, for speed (plumbing/speed.py): on the CPU, the thread count is chosen as train() runs
    with speed.threads_chosen(model, optimizer, device):
        run = train(model, trainloader, testloader, loss_function, optimizer, epochs, device)

    # ------------------------------------------------------------------------ "Plot the graph here"
    fig = None
    if run.epochs:                  # a Ctrl-C during the first epoch leaves nothing to draw
        fig = common.plot_losses({"baseline": run}, "Without dropout: training and validation loss")
    # Ours: the history, the checkpoints and the plot (baseline_loss.png), saved as one set
    saving.save_run("baseline", run, dropout=0.0, out_dir=out_dir, plot=fig)

    # -------------------------------------------------------------- "Overfitting", "Regularization"
    # The tutorial calls stopping at the lowest validation loss "L2 Regularization": that is early
    # stopping (L2 regularisation is a penalty on the weights). baseline_best.pt keeps that epoch.
    common.print_summary(run, cli.divergence_advice(args))
    return cli.EXIT_STATUS[run.stopped]


if __name__ == "__main__":
    cli.run_script(main)    # as its own process: first the speed settings of plumbing/speed.py

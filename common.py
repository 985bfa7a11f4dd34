"""The lesson's shared code: the network, the training loop and the Run it returns, the loss plot
and the verdict on overfitting (steps 2, 3), view_classify (step 4), and the data (step 1).

The mechanics a learner may skip live in plumbing/; each call says so by its module name. A
comment that says "ours" marks a line the tutorial's code does not have.
"""
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F    # F's home: the tutorial's torch.functional only imports it
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, RandomSampler, SequentialSampler,
                              TensorDataset)
from torchvision import datasets

from plumbing import cli, datafiles, saving

CLASSES = tuple(datasets.FashionMNIST.classes)     # the names of labels 0 to 9, in their order
# A loss per image above this means the training has blown up: an untrained network's is ln(10).
DIVERGED_LOSS = 100.0


# --------------------------------------------------------- "Define the Neural Network" (steps 2, 3)

class FashionNeuralNetwork(nn.Module):
    """The tutorial's 784-256-128-64-10 network, ReLU, log-softmax output: three hidden layers,
    where its text says two. dropout=0 is its FashionNeuralNetwork, 0.2 its FashionNeuralNetworkD.
    """

    def __init__(self, dropout=0.0):
        super().__init__()
        self.layer_input = nn.Linear(784, 256)
        self.layer_hidden_one = nn.Linear(256, 128)
        self.layer_hidden_two = nn.Linear(128, 64)
        self.layer_output = nn.Linear(64, 10)
        self.dropout = nn.Dropout(p=dropout)    # p=0 passes all through; acts in train() mode only

    def forward(self, x):
        # Flattened the input to make sure it fits the layer input
        x = x.view(x.shape[0], -1)                              # (B, 1, 28, 28) -> (B, 784)
        x = self.dropout(F.relu(self.layer_input(x)))           # (B, 256)
        x = self.dropout(F.relu(self.layer_hidden_one(x)))      # (B, 128)
        x = self.dropout(F.relu(self.layer_hidden_two(x)))      # (B, 64)
        x = F.log_softmax(self.layer_output(x), dim=1)          # (B, 10) log-probabilities
        return x


# ------------------------------------------------------------------- "Train our model" (steps 2, 3)

def train(model, trainloader, testloader, loss_function, optimizer, epochs, device,
          validated_on="test", scheduler=None):
    """The tutorial's loop: each epoch, train on trainloader, then validate on testloader (the test
    set, or held-out training images with validated_on="validation" from 05_beyond.py, which may
    pass a scheduler too). Ctrl-C or a loss that blows up ends the run early."""
    # Initialize two empty arrays to hold the train and test loss every cycle
    train_losses, test_losses = [], []
    accuracies, seconds, weights = [], [], {}     # ours: accuracy, seconds, the weights kept
    name = validated_on.capitalize()
    try:
        for i in range(epochs):
            start = time.perf_counter()
            running_loss = 0
            seen = 0        # ours: the images trained on (a sampler or drop_last may skip some)
            # Loop through all of the train set forward and back propagate
            for images, labels in trainloader:
                images, labels = images.to(device), labels.to(device)   # (B, 1, 28, 28), (B,)
                optimizer.zero_grad()                      # Clear the previous gradients
                log_ps = model(images)                     # Forwardpropagate
                loss = loss_function(log_ps, labels)       # Calculate the loss: the batch's mean
                loss.backward()                            # Backpropagate
                optimizer.step()                           # Update the weights
                if scheduler:
                    scheduler.step()                       # ours: 05_beyond.py --schedule
                running_loss += loss.item() * len(labels)  # Accumulate the total loss (ours: a sum)
                seen += len(labels)

            # Initialize test loss and accuracy to be 0 for every start of cycle
            test_loss = 0
            accuracy = 0
            tested = 0      # ours: the images validated on
            # Turn off the gradients
            with torch.no_grad():
                # Turn on Evaluation mode: dropout off, so the whole network is measured. The
                # tutorial's first loop has no eval()/train(); without dropout they change nothing.
                model.eval()
                for images, labels in testloader:
                    images, labels = images.to(device), labels.to(device)
                    log_ps = model(images)                           # Forwardpropagate
                    ps = torch.exp(log_ps)                           # Normalize the log-prob
                    test_loss += loss_function(log_ps, labels).item() * len(labels)  # a sum
                    top_p, top_class = ps.topk(1, dim=1)             # (B, 1): the top probability
                    equals = top_class == labels.view(*top_class.shape)   # (B, 1): vs the label
                    accuracy += equals.sum().item()                  # count the right ones (ours)
                    tested += len(labels)
                # Turn on training mode
                model.train()

            if not (seen and tested):    # ours: an empty loader has no loss per image to give
                raise ValueError(f"train(): the {'testloader' if seen else 'trainloader'} is empty")
            # Ours: the sums divided by the number of images seen, where the tutorial divides batch
            # means by the number of batches, so its short last batch counts as much as a full one.
            train_loss = running_loss / seen
            test_loss = test_loss / tested
            accuracy = accuracy / tested
            if not (train_loss < DIVERGED_LOSS and test_loss < DIVERGED_LOSS):     # NaN too
                print(f"Epoch: {i + 1}/{epochs}..  Training Loss: {train_loss:.3g}..  "
                      f"{name} Loss: {test_loss:.3g}: the training has blown up.")
                return Run(validated_on, train_losses, test_losses, accuracies, seconds, weights,
                           "diverged")
            weights = saving.keep_weights(weights, model, i + 1, test_losses)  # ours, the .pt
            # Append the average losses to the array for plotting
            train_losses.append(train_loss)
            test_losses.append(test_loss)
            accuracies.append(accuracy)
            seconds.append(round(time.perf_counter() - start, 3))
            # Print the result: the tutorial's line, with its numbers per image
            print(f"Epoch: {i + 1}/{epochs}..  Training Loss: {train_loss:.3f}..  "
                  f"{name} Loss: {test_loss:.3f}..  {name} Accuracy: {accuracy:.3f}", flush=True)
    except KeyboardInterrupt as stop:     # Ctrl-C, or SIGTERM or SIGHUP (plumbing.cli.Terminated)
        n = len(seconds)    # the epochs recorded in full: a Ctrl-C can land between two appends
        run = Run(validated_on, train_losses[:n], test_losses[:n], accuracies[:n], seconds, weights,
                  getattr(stop, "stopped", "interrupted"))
        print(f"\n{run.stopped.capitalize()} during epoch {run.epochs + 1}.")
        return run
    return Run(validated_on, train_losses, test_losses, accuracies, seconds, weights)


@dataclass
class Run:
    """What train() returns: the tutorial's train_losses and test_losses (on the set validated
    on), each epoch's accuracy and seconds, and the weights of up to three epochs."""
    validated_on: str = "test"       # "test", as in the tutorial, or "validation" (05_beyond.py)
    train_losses: list = field(default_factory=list)
    test_losses: list = field(default_factory=list)
    accuracies: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)   # epoch -> state_dict (plumbing.saving)
    stopped: str = None     # None, "diverged", "interrupted" (Ctrl-C), "terminated", "hung up"
    test_of_best: dict = None        # with a validation split: the test set's verdict on the best

    @property
    def epochs(self):
        return len(self.test_losses)

    @property
    def best_epoch(self):
        """The epoch of lowest validation loss, counted from 1."""
        if not self.test_losses:        # stopped during its first epoch
            raise ValueError("this Run holds no epoch, so no epoch of lowest validation loss")
        return 1 + self.test_losses.index(min(self.test_losses))


def evaluate(model, images, labels, device):
    """Loss and accuracy per image of a whole set at once, in eval mode (outside the loop)."""
    model.eval()
    with torch.no_grad():
        log_ps = model(images.to(device))
    labels = labels.to(device)
    return F.nll_loss(log_ps, labels).item(), (log_ps.argmax(dim=1) == labels).float().mean().item()


# --------------------------------------------------------------- "Plot the graph here" (steps 2, 3)

def plot_losses(runs, title):
    """The tutorial's plot of train_losses and test_losses, for one run or two (name -> Run)."""
    # The tutorial's plt.plot(train_losses, label='Training Loss') and plt.plot(test_losses, ...),
    # drawn on a Figure of our own, for a PNG: a script has no notebook to show pyplot's figure in.
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for (name, run), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        epochs = range(1, run.epochs + 1)
        prefix = f"{name}: " if len(runs) > 1 else ""
        source = "the test set" if run.validated_on == "test" else "held-out training images"
        ax.plot(epochs, run.train_losses, "--", color=color, label=f"{prefix}Training Loss")
        ax.plot(epochs, run.test_losses, "-", color=color,
                label=f"{prefix}Validation Loss ({source})")
        best = run.best_epoch
        ax.plot(best, run.test_losses[best - 1], "o", color=color, markersize=8,
                markerfacecolor="none", markeredgewidth=2,
                label=f"{prefix}lowest validation loss, epoch {best}")
    ax.set(xlabel="epoch", ylabel="loss per image (NLL)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=True, fontsize=8)
    return fig


# -------------------------------------------------------------- "Overfitting" (steps 2, 3 and 05)

def overfitting(run):
    """The one rule behind every verdict on overfitting (02, 03, 05): over the last two thirds of
    the epochs, the validation loss climbs by more than twice its own noise. The climb is that of
    a straight line fitted to those losses; the noise, its standard error, from how far the losses
    scatter around the line. Returns (verdict, climb, noise); the verdict is None under 10 epochs.
    """
    if run.epochs < 10:
        return None, None, None
    if not torch.isfinite(torch.tensor(run.test_losses, dtype=torch.float64)).all():  # NaN: "no"
        raise ValueError("overfitting(): the validation losses are not all finite numbers")
    losses = run.test_losses[run.epochs // 3:]                # the last two thirds
    k = len(losses)
    x = [i - (k - 1) / 2 for i in range(k)]                    # those epochs, centred on 0
    sxx = sum(a * a for a in x)
    slope = sum(a * y for a, y in zip(x, losses)) / sxx        # least squares
    mean = sum(losses) / k
    scatter = sum((y - mean - slope * a) ** 2 for a, y in zip(x, losses)) / (k - 2)
    climb, noise = slope * (k - 1), (scatter / sxx) ** 0.5 * (k - 1)
    return climb > 2 * noise, climb, noise


def print_summary(run, advice="with these settings"):
    """The run in numbers: lowest and final validation loss, the verdict on overfitting, the final
    accuracy, the speed; then, if it stopped early, why (`advice`: cli.divergence_advice)."""
    v = run.validated_on
    if run.epochs:
        best, last = run.best_epoch, run.epochs
        lowest, final = run.test_losses[best - 1], run.test_losses[-1]
        seconds = sum(run.seconds)
        print(f"Lowest validation loss: {lowest:.3f} at epoch {best} "
              f"({v} accuracy {run.accuracies[best - 1]:.3f})")
        print(f"Final validation loss:  {final:.3f} at epoch {last}, {final - lowest:.3f} above "
              f"its lowest")
        verdict, climb, noise = overfitting(run)
        print("Overfitting: too few epochs to tell (it takes 10)" if verdict is None else
              f"Overfitting: {'yes' if verdict else 'no'}: from epoch {last // 3 + 1} to {last} "
              f"the validation loss {'climbed' if climb > 0 else 'fell'} by {abs(climb):.3f} "
              f"(a climb counts above twice its noise: {2 * noise:.3f})")
        print(f"{f'Final {v} accuracy:':<23} {run.accuracies[-1]:.3f}")
        print(f"Time: {seconds:.1f} s for {last} epoch{'s' * (last > 1)}, "
              f"{seconds / last:.2f} s per epoch")
    cli.say_how_it_stopped(run, f"(a loss above {DIVERGED_LOSS:g} or not a number) {advice}")


# ----------------------------------------------------------------------------- "Inference" (step 4)

def view_classify(img, ps, title):
    """The tutorial's helper.view_classify: the image beside a bar chart of its 10 probabilities.
    img: a normalised image with 784 values, ps: its probabilities (10 values), on any device."""
    # As NumPy arrays and lists: matplotlib takes a tensor only through a deprecated conversion.
    img, ps = img.detach().cpu().view(28, 28).numpy(), ps.detach().cpu().view(10).tolist()
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(ncols=2, width_ratios=(1, 1.4))
    ax1.imshow(img, cmap="gray", vmin=-1, vmax=1)
    ax1.set_axis_off()
    ax2.barh(range(10), ps, color=["tab:orange" if p == max(ps) else "tab:blue" for p in ps])
    ax2.set_yticks(range(10), CLASSES)
    ax2.invert_yaxis()                            # label 0 at the top, as in the class list
    ax2.set(xlim=(0, 1), xlabel="probability", title="Class probability")
    fig.suptitle(title)
    return fig


# ------------------------------------------------- "Lets import the Fashion-MNIST dataset" (step 1)

def load_data(data_dir, batch_size=64, download=True):
    """Step 1 in one call: trainloader and testloader (01_data.py shows the step in full)."""
    return make_loaders(*load_datasets(data_dir, download), batch_size)


def load_datasets(data_dir, download=True, transform=None):
    """The tutorial's traindataset and testdataset: torchvision's FashionMNIST, its uint8 images
    in .data (N, 28, 28)."""
    # Ours: the four files found, checked and unpacked first, from a local copy if there is one
    # (torchvision's download fails on many networks); then download=True has nothing left to do.
    root = datafiles.ensure_raw_files(data_dir, download)
    # Download the training dataset and transform
    traindataset = datasets.FashionMNIST(root, download=download, train=True, transform=transform)
    # Download the validation dataset and transform
    testdataset = datasets.FashionMNIST(root, download=download, train=False, transform=transform)
    return traindataset, testdataset


def make_loaders(traindataset, testdataset, batch_size=64):
    """trainloader (shuffled) and testloader (in order) over the two splits, normalised once."""
    trainloader = make_loader(TensorDataset(normalize(traindataset.data), traindataset.targets),
                              batch_size, shuffle=True)
    testloader = make_loader(TensorDataset(normalize(testdataset.data), testdataset.targets),
                             batch_size, shuffle=False)
    return trainloader, testloader


def normalize(data):
    """uint8 images (N, 28, 28) -> floats (N, 1, 28, 28) in [-1, 1], once for the whole split: the
    operations of the tutorial's Compose([ToTensor(), Normalize((0.5,), (0.5,))]), in its order."""
    return data.unsqueeze(1).float().div_(255).sub_(0.5).div_(0.5)


def make_loader(dataset, batch_size, shuffle):
    """The tutorial's DataLoader, shuffled or not: its samplers, so its batches in its order, but
    each batch one indexing of the dataset's whole tensors, where DataLoader(dataset, batch_size=64,
    shuffle=True) fetches its 64 images one by one (docs/speed.md)."""
    sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      batch_size=None)

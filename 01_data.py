"""Step 1 of the tutorial, "Lets import the Fashion-MNIST dataset": load, normalise, batch, look.

    python 01_data.py [--data-dir DIR] [--out-dir DIR]

Prints the sizes of both splits, the classes and their counts, one batch's shape and the pixel
range before and after normalisation; writes samples.png, a few training images of each class.
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # finds plumbing/ under python -I
from plumbing import cli, saving    # first of all: see plumbing/__init__.py

import torch
from matplotlib.figure import Figure
from torchvision import transforms

import common


def main(argv=None):
    args = cli.make_parser(__doc__).parse_args(argv)
    out_dir = saving.prepare_out_dir(args.out_dir)

    # Transform the images into tensors and normalize. The tutorial's
    # Normalize((0.5,0.5,0.5),(0.5,0.5,0.5)) fails on today's torchvision ("output with shape
    # [1, 28, 28] doesn't match the broadcast shape [3, 28, 28]"): Fashion-MNIST has one channel.
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    # Download the training and the validation dataset and transform: load_datasets() makes
    # datasets.FashionMNIST(data_dir, train=..., transform=transform) after finding and checking
    # the four files, from a local copy first, since the download fails on many networks.
    traindataset, testdataset = common.load_datasets(args.data_dir,
                                                     download=not args.no_download,
                                                     transform=transform)
    # Load the data using DataLoader class, create a batch of 64 images and shuffle
    trainloader = torch.utils.data.DataLoader(dataset=traindataset, batch_size=64, shuffle=True)
    testloader = torch.utils.data.DataLoader(dataset=testdataset, batch_size=64, shuffle=True)

    print(f"Training images: {len(traindataset)}, test images: {len(testdataset)}")
    print("Classes, in label order:",
          ", ".join(f"{i} {name}" for i, name in enumerate(common.CLASSES)))
    train_counts = torch.bincount(traindataset.targets, minlength=10)
    test_counts = torch.bincount(testdataset.targets, minlength=10)
    print(f"{'class':<12} {'train':>6} {'test':>6}")
    for name, n_train, n_test in zip(common.CLASSES, train_counts.tolist(), test_counts.tolist()):
        print(f"{name:<12} {n_train:>6} {n_test:>6}")
    print(f"Batches of 64: {len(trainloader)} for training, {len(testloader)} for testing")
    images, labels = next(iter(trainloader))
    print("One training batch:", images.shape, labels.shape)

    # The later scripts apply that transform once to each whole split instead (make_loaders): the
    # same numbers, without a PIL round trip per image per epoch, which with the loader's one-by-one
    # fetching makes most of the tutorial's epoch (docs/speed.md). Their test loader keeps its
    # order: shuffling the test set changes nothing but which images come first.
    raw = traindataset.data
    normalised = common.normalize(raw)
    print(f"Pixel range before normalisation: {raw.min().item()} to {raw.max().item()} "
          f"({raw.dtype})")
    print(f"Pixel range after normalisation:  {normalised.min().item():.1f} to "
          f"{normalised.max().item():.1f} ({normalised.dtype})")
    n = min(1000, len(traindataset))
    same = torch.equal(torch.stack([traindataset[i][0] for i in range(n)]), normalised[:n])
    print(f"The tutorial's transform of the first {n} training images equals the scripts' "
          f"tensors: {same}")

    path = out_dir / "samples.png"
    saving.save_figures({path: plot_samples(raw, traindataset.targets)})
    print(f"Wrote {path}")
    return 0


def plot_samples(images, labels, per_class=8):
    """One row per class, the first `per_class` training images of each, tiled in one picture."""
    gap = 2                                                   # pixels of white between the images
    grid = torch.full((10 * (28 + gap), per_class * (28 + gap)), 255, dtype=torch.uint8)
    for label in range(10):
        for column, index in enumerate((labels == label).nonzero().view(-1)[:per_class].tolist()):
            top, left = label * (28 + gap), column * (28 + gap)
            grid[top:top + 28, left:left + 28] = images[index]
    fig = Figure(figsize=(per_class * 0.9 + 1.6, 10 * 0.95), layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([label * (28 + gap) + 14 for label in range(10)], common.CLASSES, fontsize=11)
    ax.set_xticks([])
    ax.spines[:].set_visible(False)
    ax.tick_params(length=0)
    ax.set_title("Fashion-MNIST training images, one row per class", fontsize=12)
    return fig


if __name__ == "__main__":
    cli.run_script(main)

"""Step 4 of the tutorial, "Inference": what the trained network sees, and what it thinks.

    python 04_inference.py [--index 0] [--image PHOTO.png] [--checkpoint outputs/dropout.pt]

Rebuilds the network from a checkpoint of 03_dropout.py (or 02_baseline.py, or the notebook's
torch.save(model.state_dict(), 'checkpoint.pth')), shows one test image, or your own photo with
--image, beside its 10 class probabilities (inference.png or inference_image.png), then measures
the whole test set: accuracy per class, confusion_matrix.png and mistakes.png.
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # finds plumbing/ under python -I
from plumbing import cli, photo, saving    # first of all: see plumbing/__init__.py

from pathlib import Path

import torch
from matplotlib.figure import Figure

import common
from common import FashionNeuralNetwork


def main(argv=None):
    parser = cli.make_parser(__doc__)
    cli.add_device_arg(parser)
    parser.add_argument("--checkpoint", type=cli.path_arg,
                        help="checkpoint to load, or a state_dict the notebook saved; "
                             "OUT_DIR/dropout.pt if not given")
    parser.add_argument("--index", type=cli.non_negative_int, default=0,
                        help="test image to classify")
    parser.add_argument("--image", type=cli.path_arg,
                        help="classify your own PNG or JPEG instead of a test image")
    args = parser.parse_args(argv)
    device = cli.get_device(args.device)
    out_dir = saving.prepare_out_dir(args.out_dir)

    # "Make sure to make our model in the evaluation mode": load_checkpoint ends with model.eval()
    checkpoint_path = args.checkpoint or out_dir / "dropout.pt"
    model, checkpoint = saving.load_checkpoint(checkpoint_path, FashionNeuralNetwork, device)
    if checkpoint["wrapper"]:              # the notebook's model was wrapped when it was saved
        print(f"Read {checkpoint_path} as the same network: its weights were saved from "
              f"{checkpoint['wrapper']}'s wrapper, whose prefix is taken off their names")
    if checkpoint["epoch"] is None:        # a state_dict saved elsewhere, as the notebook saves one
        print(f"Loaded {checkpoint_path}: the tutorial's network, saved elsewhere (a state_dict "
              "without these scripts' record): its dropout and epoch are unknown")
    else:
        print(f"Loaded {checkpoint_path}: dropout {checkpoint['dropout']}, "
              f"epoch {checkpoint['epoch']}")
    _, testdataset = common.load_datasets(args.data_dir, download=not args.no_download)
    images, labels = common.normalize(testdataset.data), testdataset.targets  # (N, 1, 28, 28), (N,)
    if args.index >= len(images) and not args.image:
        parser.error(f"argument --index: {args.index} is outside the test set; use 0 to "
                     f"{len(images) - 1}")

    # ------------------------------------------------------------------------------------ one image
    if args.image:
        pixels, about = photo.prepare_image(args.image)    # about: what was done to it
        img = common.normalize(pixels)
        name = f"Your image {Path(args.image).name}"
        path = out_dir / "inference_image.png"
    else:
        # The tutorial's img = images[0] of next(iter(testloader)), a shuffled loader, is another
        # image each run. Here the test set is in order: --index (0 by default) names one image.
        img = images[args.index]
        name, about = f"Test image {args.index}", f"true: {common.CLASSES[labels[args.index]]}"
        path = out_dir / "inference.png"
    # Convert 2D image to 1D vector: a batch of one image, (1, 784). forward() would flatten a
    # (1, 1, 28, 28) image just as well: its x.view(x.shape[0], -1) does this for any batch.
    img = img.view(1, 784)
    with torch.no_grad():
        output = model(img.to(device))     # log-probabilities; model(x) calls model.forward(x)
    ps = torch.exp(output)                          # probabilities, summing to 1
    top_p, top_class = ps.topk(3, dim=1)
    print(f"{name} ({about}); the network's top 3:")
    for p, c in zip(top_p[0].tolist(), top_class[0].tolist()):
        print(f"  {common.CLASSES[c]:<12} {p:.3f}")
    title = (f"{name}: predicted {common.CLASSES[top_class[0, 0]]} ({top_p[0, 0].item():.0%}), "
             f"{about}")
    # The tutorial's helper.view_classify(img.view(1, 28, 28), ps, version='Fashion'): ours
    # knows only Fashion-MNIST's classes, so it needs no version, and it takes a title.
    pictures = {path: common.view_classify(img, ps, title)}

    # --------------------------------------------------------------------------- the whole test set
    preds = predict(model, images, device)
    confusion = torch.bincount(labels * 10 + preds, minlength=100).view(10, 10)  # [true, predicted]
    correct, total = confusion.diag().sum().item(), confusion.sum().item()
    print(f"Test accuracy: {correct / total:.4f} ({correct} of {total} images)")
    print(f"{'class':<12} accuracy")
    for class_name, right, count in zip(common.CLASSES, confusion.diag().tolist(),
                                        confusion.sum(dim=1).tolist()):
        print(f"{class_name:<12} {right / count if count else float('nan'):.3f}")
    pairs = (confusion + confusion.T).triu(diagonal=1)     # mistakes between two classes, both ways
    a, b = divmod(pairs.argmax().item(), 10)
    times = pairs[a, b].item()
    if times == 0:
        print("Confused most often: none; no test image was taken for another class")
    else:
        print(f"Confused most often: {common.CLASSES[a]} and {common.CLASSES[b]}, "
              f"{times} time{'s' * (times > 1)} "
              f"({confusion[a, b].item()} {common.CLASSES[a]} taken for {common.CLASSES[b]}, "
              f"{confusion[b, a].item()} the other way)")
    pictures[out_dir / "confusion_matrix.png"] = plot_confusion_matrix(confusion)
    pictures[out_dir / "mistakes.png"] = plot_mistakes(images, labels, preds)
    saving.save_figures(pictures)             # ours: the three pictures of one run, as one set
    for path in pictures:
        print(f"Wrote {path}")
    # Ours: the one-image picture this run did not draw, if it is there, is an earlier run's
    other = out_dir / ("inference.png" if args.image else "inference_image.png")
    if other.exists():
        print(f"The {other.name} in {out_dir} is an earlier run's.")
    return 0


def predict(model, images, device, batch_size=1000):
    """The most likely class of each image, (N,)."""
    with torch.no_grad():
        return torch.cat([model(batch.to(device)).argmax(dim=1).cpu()
                          for batch in images.split(batch_size)])


def plot_confusion_matrix(confusion):
    """10x10 counts: rows are the true classes, columns the predicted ones."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    ax.imshow(confusion.numpy(), cmap="Blues")
    for true in range(10):
        for pred in range(10):
            count = confusion[true, pred].item()
            ax.text(pred, true, count, ha="center", va="center", fontsize=8,
                    color="white" if count > confusion.max().item() / 2 else "black")
    ax.set_xticks(range(10), common.CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(10), common.CLASSES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix of the test set (counts)")
    return fig


def plot_mistakes(images, labels, preds, columns=8, rows=4):
    """The first misclassified test images, tiled, each under what the network said and the truth"""
    wrong = (preds != labels).nonzero().view(-1)[:columns * rows].tolist()
    width, height = 28 + 6, 28 + 18            # a tile: the image, with room for two lines above it
    grid = torch.ones(rows * height, columns * width)                  # white: 1 in [-1, 1]
    fig = Figure(figsize=(columns * 1.3, rows * 1.6), layout="constrained")
    ax = fig.subplots()
    for n, index in enumerate(wrong):
        top, left = (n // columns) * height + 16, (n % columns) * width + 3
        grid[top:top + 28, left:left + 28] = images[index].view(28, 28)
        said, truth = common.CLASSES[preds[index]], common.CLASSES[labels[index]]
        ax.text(left + 14, top - 2, f"{said}\n(is {truth})",
                ha="center", va="bottom", fontsize=7)
    ax.imshow(grid.numpy(), cmap="gray", vmin=-1, vmax=1)
    ax.set_axis_off()
    ax.set_title("Mistakes: what the network said (and the truth)" if wrong
                 else "No mistakes: every test image was classified right")
    return fig


if __name__ == "__main__":
    cli.run_script(main)

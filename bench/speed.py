"""How fast is an epoch of 02_baseline.py, beside the tutorial's own pipeline and the machine's limit?

    python bench/speed.py [--rounds 7] [--data-dir ~/.pytorch/F_MNIST_data/]

Each round times one epoch (training and validation) of the tutorial's pipeline as the notebook
writes it (a DataLoader over torchvision's FashionMNIST with a per-image ToTensor + Normalize,
batch 64, shuffled; the network, NLLLoss, Adam lr=0.003), then one epoch of the scripts' own code
path (common.load_data and common.train, as 02_baseline.py calls them), alternating which goes
first. It prints each round, the median ratio and the compute floor measured on the spot: the
network's FLOPs per epoch over the rate a large matrix product reaches here. Run it alone on the
machine: a second job on the same cores slows both. It finds the data as the scripts do (a local
copy first, so it runs offline where the scripts do).
"""
import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn, optim
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common                                     # noqa: E402  (the scripts' folder, added just above)
from common import FashionNeuralNetwork           # noqa: E402
from plumbing import cli, datafiles               # noqa: E402



def tutorial_setup(data_dir):
    """The notebook's data and model cells, with the one fix today's torchvision needs (one channel)."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    traindataset = datasets.FashionMNIST(data_dir, download=False, train=True, transform=transform)
    trainloader = torch.utils.data.DataLoader(dataset=traindataset, batch_size=64, shuffle=True)
    testdataset = datasets.FashionMNIST(data_dir, download=False, train=False, transform=transform)
    testloader = torch.utils.data.DataLoader(dataset=testdataset, batch_size=64, shuffle=True)
    model = FashionNeuralNetwork()
    optimizer = optim.Adam(model.parameters(), lr=0.003)
    return model, nn.NLLLoss(), optimizer, trainloader, testloader


def tutorial_epoch(model, loss_function, optimizer, trainloader, testloader):
    """One cycle of the notebook's training loop, as written (its batch-mean accuracy included)."""
    running_loss = 0
    for images, labels in trainloader:
        optimizer.zero_grad()
        log_ps = model(images)
        loss = loss_function(log_ps, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    test_loss = 0
    accuracy = 0
    with torch.no_grad():
        model.eval()
        for images, labels in testloader:
            log_ps = model(images)
            ps = torch.exp(log_ps)
            test_loss += loss_function(log_ps, labels)
            top_p, top_class = ps.topk(1, dim=1)
            equals = top_class == labels.view(*top_class.shape)
            accuracy += torch.mean(equals.type(torch.FloatTensor))
        model.train()
    return accuracy.item() / len(testloader)


def scripts_setup(data_dir):
    """What 02_baseline.py builds before it trains."""
    trainloader, testloader = common.load_data(data_dir, 64, download=False)
    model = FashionNeuralNetwork()
    optimizer = optim.Adam(model.parameters(), lr=0.003, fused=True)
    return model, nn.NLLLoss(), optimizer, trainloader, testloader


def scripts_epoch(model, loss_function, optimizer, trainloader, testloader):
    """One epoch of common.train(), the loop 02_baseline.py runs."""
    with contextlib.redirect_stdout(io.StringIO()):
        run = common.train(model, trainloader, testloader, loss_function, optimizer, 1, torch.device("cpu"))
    return run.accuracies[-1]


def matmul_rate(n=2048, seconds=2.0):
    """FLOP/s of an n x n by n x n float32 product, the best of repeated runs for about `seconds`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b                                                    # warm up
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def epoch_flops(n_train=60000, n_test=10000):
    """Multiply-adds of the four layers, x2 for FLOPs; backward costs about twice the forward pass."""
    layers = [m for m in FashionNeuralNetwork().modules() if isinstance(m, nn.Linear)]
    forward = 2 * sum(m.in_features * m.out_features for m in layers)
    return 3 * forward * n_train + forward * n_test


def cpu_model():
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=cli.positive_int, default=7, help="rounds of one epoch each (default: 7)")
    parser.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR, help="torchvision root, as in the scripts")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        datafiles.ensure_raw_files(args.data_dir)                # a local copy first, as the scripts do
    data_dir = Path(args.data_dir).expanduser()

    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} "
          f"threads; torch {torch.__version__}, Python {platform.python_version()}")
    rate = matmul_rate()
    flops = epoch_flops()
    floor = flops / rate
    print(f"Compute floor: {flops / 1e9:.0f} GFLOP an epoch (training and validation) at {rate / 1e9:.0f} GFLOP/s "
          f"(a 2048x2048 matrix product here) = {floor:.2f} s")

    sides = {"tutorial": (tutorial_setup(data_dir), tutorial_epoch),
             "scripts": (scripts_setup(data_dir), scripts_epoch)}
    times = {name: [] for name in sides}
    print(f"{'round':>5}  {'tutorial s':>10}  {'scripts s':>9}  {'faster':>6}  {'scripts / floor':>15}")
    for r in range(1, args.rounds + 1):
        order = list(sides) if r % 2 else list(sides)[::-1]      # alternate which side goes first
        for name in order:
            state, epoch = sides[name]
            start = time.perf_counter()
            epoch(*state)
            times[name].append(time.perf_counter() - start)
        t, s = times["tutorial"][-1], times["scripts"][-1]
        print(f"{r:>5}  {t:>10.2f}  {s:>9.2f}  {t / s:>5.1f}x  {s / floor:>14.1f}x", flush=True)
    ratios = [t / s for t, s in zip(times["tutorial"], times["scripts"])]
    median_scripts = statistics.median(times["scripts"])
    print(f"Median: tutorial {statistics.median(times['tutorial']):.2f} s, scripts {median_scripts:.2f} s an epoch; "
          f"the scripts are {statistics.median(ratios):.1f}x faster, {median_scripts / floor:.1f}x the compute floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())

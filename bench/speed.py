"""How fast is an epoch of 02_baseline.py, beside the tutorial's own pipeline and the machine's limit?

    python bench/speed.py [--rounds 7] [--data-dir ~/.pytorch/F_MNIST_data/]
    python bench/speed.py --busy 2 [--rounds 3] [--fixed-threads 2]

Each round times one epoch (training and validation) of the tutorial's pipeline as the notebook
writes it (a DataLoader over torchvision's FashionMNIST with a per-image ToTensor + Normalize,
batch 64, shuffled; the network, NLLLoss, Adam lr=0.003), then one epoch of the scripts' own code
path (common.load_data and common.train, as 02_baseline.py calls them), alternating which goes
first. Each side runs in a process of its own, with its own settings: the tutorial's with torch's
defaults, as a learner runs the notebook; the scripts' with what cli.run_script sets in a script's
own process (huge pages, strict sums, denormals flushed) and the thread choice. It prints each round, the median
ratio and the compute floor measured on the spot: the network's FLOPs per epoch over the rate a
large matrix product reaches here. Run it alone on the machine: a second job on the same cores
slows both. It finds the data as the scripts do (a local copy first, so it runs offline where the
scripts do).

With --busy N it measures the machine shared instead: it starts its own busy programs (a Python
loop each, standing in for a browser tab or a notebook kernel), 0 to N of them, and times an epoch
of the scripts with their thread choice (plumbing/speed.py) against a fixed thread count,
alternating, each round; it prints the median of the rounds, and stops every program it started,
also on Ctrl-C.
"""
import argparse
import contextlib
import io
import os
import platform
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn, optim
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common                                     # noqa: E402  (the scripts' folder, added just above)
from common import FashionNeuralNetwork           # noqa: E402
from plumbing import cli, datafiles, speed    # noqa: E402



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
    """One epoch of common.train(), the loop 02_baseline.py runs, with the thread choice the
    scripts make (plumbing.speed.threads_chosen, started afresh each epoch)."""
    with contextlib.redirect_stdout(io.StringIO()), \
            speed.threads_chosen(model, optimizer, torch.device("cpu")):
        run = common.train(model, trainloader, testloader, loss_function, optimizer, 1,
                           torch.device("cpu"))
    return run.accuracies[-1]


def fixed_epoch(model, loss_function, optimizer, trainloader, testloader):
    """One epoch of common.train() on the thread count set, without the scripts' thread choice."""
    with contextlib.redirect_stdout(io.StringIO()):
        common.train(model, trainloader, testloader, loss_function, optimizer, 1,
                     torch.device("cpu"))


def epoch_server(connection, data_dir, side):
    """In a process of its own, so that each side runs with its own settings: an epoch each time
    it is asked, of the tutorial's pipeline as a learner runs the notebook (side "tutorial"), of
    the scripts as they run (None: what cli.run_script sets in a script's own process, the thread
    choice), or of the scripts as before the thread choice (a fixed thread count, MKL's default
    sums, denormals kept, 4 kB pages)."""
    if side is None:
        speed.for_own_process()                    # as cli.run_script does, before any tensor
    else:
        os.environ[speed.HUGE_PAGES] = "0"         # torch's default: 4 kB pages
    torch.manual_seed(0)
    if side == "tutorial":
        state, epoch = tutorial_setup(data_dir), tutorial_epoch
    elif side:
        torch.set_num_threads(side)
        state, epoch = scripts_setup(data_dir), fixed_epoch
    else:
        state, epoch = scripts_setup(data_dir), scripts_epoch
    while connection.recv():
        start = time.perf_counter()
        epoch(*state)
        connection.send(time.perf_counter() - start)


@contextlib.contextmanager
def epoch_servers(data_dir, sides):
    """One epoch_server process per side (name -> its side: "tutorial", a fixed thread count or
    None), ready to time."""
    context = multiprocessing.get_context("spawn")
    servers = {}
    try:
        for name, fixed in sides.items():
            ours, theirs = context.Pipe()
            process = context.Process(target=epoch_server, args=(theirs, data_dir, fixed))
            process.start()
            servers[name] = (ours, process)
        yield {name: ours for name, (ours, _) in servers.items()}
    finally:
        for ours, process in servers.values():
            with contextlib.suppress(OSError):
                ours.send(False)
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


@contextlib.contextmanager
def busy_programs(n):
    """n programs that keep a core busy each, stopped whatever happens (Ctrl-C too)."""
    programs = []
    try:
        for _ in range(n):
            programs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for program in programs:
            program.kill()
            program.wait()


def busy_mode(args, data_dir):
    """The scripts' epoch beside 0 to --busy busy programs: as the scripts run it, and with a fixed
    thread count and MKL's default sums (as before the thread choice), alternating, --rounds
    rounds; the medians and each one's ratio to the same side alone."""
    sides = {"scripts (threads chosen)": None,
             f"{args.fixed_threads} thread{'s' * (args.fixed_threads > 1)} fixed": args.fixed_threads}
    times = {(busy, side): [] for busy in range(args.busy + 1) for side in sides}
    with epoch_servers(data_dir, sides) as servers:
        for r in range(1, args.rounds + 1):
            for busy in range(args.busy + 1):
                with busy_programs(busy):
                    order = list(sides) if (r + busy) % 2 else list(sides)[::-1]
                    for side in order:
                        servers[side].send(True)
                        times[busy, side].append(servers[side].recv())
                        print(f"round {r}, beside {busy} busy, {side}: "
                              f"{times[busy, side][-1]:.2f} s", flush=True)
    print(f"\nMedian of {args.rounds} rounds, seconds an epoch (and against the same side alone):")
    print(f"{'condition':<28}" + "".join(f"{side:>28}" for side in sides))
    for busy in range(args.busy + 1):
        name = "alone" if busy == 0 else f"beside {busy} busy program{'s' * (busy > 1)}"
        cells = []
        for side in sides:
            median = statistics.median(times[busy, side])
            cells.append(f"{median:.2f} ({median / statistics.median(times[0, side]):.2f}x)")
        print(f"{name:<28}" + "".join(f"{cell:>28}" for cell in cells))
    alone = [statistics.median(times[0, side]) for side in sides]
    print(f"Alone, the scripts take {alone[0] / alone[1]:.2f}x the time of "
          f"{args.fixed_threads} fixed threads.")
    return 0


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
    parser.add_argument("--busy", type=cli.non_negative_int, default=0,
                        help="measure beside 0 to BUSY busy programs instead (default: 0, off)")
    parser.add_argument("--fixed-threads", type=cli.positive_int, default=torch.get_num_threads(),
                        help="with --busy: the fixed thread count to compare with (default: "
                             "torch's own, %(default)s)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        datafiles.ensure_raw_files(args.data_dir)                # a local copy first, as the scripts do
    data_dir = Path(args.data_dir).expanduser()

    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} "
          f"threads; torch {torch.__version__}, Python {platform.python_version()}")
    if args.busy:
        return busy_mode(args, data_dir)
    rate = matmul_rate()
    flops = epoch_flops()
    floor = flops / rate
    print(f"Compute floor: {flops / 1e9:.0f} GFLOP an epoch (training and validation) at {rate / 1e9:.0f} GFLOP/s "
          f"(a 2048x2048 matrix product here) = {floor:.2f} s")

    times = {"tutorial": [], "scripts": []}
    print(f"{'round':>5}  {'tutorial s':>10}  {'scripts s':>9}  {'faster':>6}  {'scripts / floor':>15}")
    with epoch_servers(data_dir, {"tutorial": "tutorial", "scripts": None}) as servers:
        for r in range(1, args.rounds + 1):
            order = list(times) if r % 2 else list(times)[::-1]  # alternate which side goes first
            for name in order:
                servers[name].send(True)
                times[name].append(servers[name].recv())
            t, s = times["tutorial"][-1], times["scripts"][-1]
            print(f"{r:>5}  {t:>10.2f}  {s:>9.2f}  {t / s:>5.1f}x  {s / floor:>14.1f}x", flush=True)
    ratios = [t / s for t, s in zip(times["tutorial"], times["scripts"])]
    median_scripts = statistics.median(times["scripts"])
    print(f"Median: tutorial {statistics.median(times['tutorial']):.2f} s, scripts {median_scripts:.2f} s an epoch; "
          f"the scripts are {statistics.median(ratios):.1f}x faster, {median_scripts / floor:.1f}x the compute floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())

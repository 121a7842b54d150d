"""The toy that makes the StarNet claim concrete: star (``*``) fusion against sum (``+``) fusion on 2D points.

"Rewrite the Stars" (Ma et al., CVPR 2024) trains DemoNet twice, identical but for the operator that fuses the two
branches of every block, and finds the element-wise product better at the same width, most of all when narrow. The
reason it gives: ``act(f1(x)) * f2(x)`` carries every pairwise product of its input's features, an implicit feature
space of about ``width**2 / 2`` dimensions, where ``act(f1(x)) + f2(x)`` stays ``width``-dimensional. Here the same
comparison runs in seconds on a CPU, on 2D sets whose boundaries no linear layer can draw, so the claim can be looked
at (``decision_figure``) and measured over seeds (``sweep``) rather than taken on trust.

Defaults, and why. 600 points, half held out, so test accuracy is about the boundary rather than memorisation, and a
full-batch step costs under a millisecond. Noise (``DEFAULT_NOISE``) puts the best achievable accuracy a little under
100% but well above what a too-narrow net reaches, so capacity, not noise, decides the comparison. 1000 Adam steps at
lr 1e-2: in trial runs of 400 steps the sum nets, which fit more slowly, were still improving, flattering the star. The
sweep's widths start at 2 because that is where the paper's claim lives; by width 16 both fusions fit all three sets.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from ..errors import InputError

Fusion = Literal["star", "sum"]
FUSIONS: tuple[str, ...] = ("star", "sum")
# Per-set Gaussian sigma (each set spans about [-1, 1]): the best boundary stays near but mostly below 100%, far above
# what a net too narrow to draw it reaches.
DEFAULT_NOISE: dict[str, float] = {"moons": 0.15, "circles": 0.08, "spirals": 0.05}
DATASETS: tuple[str, ...] = tuple(DEFAULT_NOISE)
MEASURED = Path(__file__).resolve().parents[2] / "docs" / "explain" / "toy.json"  # the committed sweep
DEFAULT_N = 600
DEFAULT_STEPS = 1000
DEFAULT_LR = 1e-2
MAX_WIDTH, MAX_DEPTH = 256, 6


def _check(name: str | None = None, noise: float | None = None, width: int | None = None,
           depth: int | None = None, fusion: str | None = None) -> None:
    """One-line ``InputError`` for the first bad argument; ``None`` means "not given"."""
    if name is not None and name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if noise is not None and not 0.0 <= noise <= 1.0:
        raise InputError(f"noise must be in [0, 1], got {noise}")
    if width is not None and not (isinstance(width, int) and 1 <= width <= MAX_WIDTH):
        raise InputError(f"width must be an integer in [1, {MAX_WIDTH}], got {width!r}")
    if depth is not None and not (isinstance(depth, int) and 1 <= depth <= MAX_DEPTH):
        raise InputError(f"depth must be an integer in [1, {MAX_DEPTH}], got {depth!r}")
    if fusion is not None and fusion not in FUSIONS:
        raise InputError(f"fusion must be 'star' or 'sum', got {fusion!r}")


def _moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles, centred on the origin."""
    y = rng.permutation(np.arange(n) % 2)
    t = rng.uniform(0.0, math.pi, n)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1))
    return x - np.array([0.5, 0.25]), y


def _circles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ring of radius 1 (class 0) around one of radius 0.5 (class 1): the boundary is quadratic."""
    y = rng.permutation(np.arange(n) % 2)
    t = rng.uniform(0.0, 2 * math.pi, n)
    r = np.where(y == 0, 1.0, 0.5)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1), y


def _spirals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two arms, 1.5 turns each, the second the first turned by half a turn; radius grows to 1."""
    y = rng.permutation(np.arange(n) % 2)
    t = rng.uniform(0.1, 1.0, n)  # fraction of the way out; the centre, where arms meet, is left out
    angle = 3 * math.pi * t + math.pi * y
    return np.stack([t * np.cos(angle), t * np.sin(angle)], 1), y


_MAKERS = {"moons": _moons, "circles": _circles, "spirals": _spirals}


def make_data(name: str, n: int = DEFAULT_N, noise: float | None = None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of 2D set ``name`` with Gaussian ``noise`` (its ``DEFAULT_NOISE`` when ``None``), balanced classes.

    Returns ``X`` float32 ``(n, 2)`` and ``y`` int64 ``(n,)`` in {0, 1}, in shuffled order; the same ``seed`` gives the
    same points.
    """
    noise = DEFAULT_NOISE.get(name) if noise is None else noise
    _check(name=name, noise=noise)
    if n < 4:
        raise ValueError(f"n must be at least 4, got {n}")
    rng = np.random.default_rng(seed)
    x, y = _MAKERS[name](n, rng)
    x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), y.astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.5,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random ``x_train, y_train, x_test, y_test``; half held out by default, since small sets overfit quietly."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test_fraction)
    if not 1 <= n_test <= len(x) - 2:  # BatchNorm needs two training points
        raise ValueError(f"test_fraction {test_fraction} of {len(x)} points leaves no test or under 2 training points")
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@dataclass(frozen=True)
class ToyData:
    """One dataset draw, split: what both nets of a comparison see."""

    name: str
    noise: float
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def toy_data(name: str, n: int = DEFAULT_N, noise: float | None = None, seed: int = 0,
             test_fraction: float = 0.5) -> ToyData:
    """``make_data`` then ``split``, both from ``seed``."""
    noise = DEFAULT_NOISE.get(name) if noise is None else noise
    x, y = make_data(name, n, noise, seed)
    return ToyData(name, float(noise), *split(x, y, test_fraction, seed))


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's CPU generator inside the block only, so callers' random streams are left as they were."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ToyBlock(nn.Module):
    """DemoNet's block on vectors: ``x + g(act(f1(n(x))) OP f2(n(x)))``, OP ``*`` (star) or ``+`` (sum).

    The pre-norm is there for both fusions, so the operator stays the only difference. Without one, star nets of depth 6
    and width 64 or more diverged (train accuracy near 50%). It is BatchNorm1d, not the LayerNorm of the paper's 2D
    DemoNet: LayerNorm over 2 features keeps only the sign of their difference, which erased exactly the narrow widths
    under test; BatchNorm is a per-feature affine map at inference, so it loses nothing at any width, and full-batch
    training makes its statistics those of the whole training set.
    """

    def __init__(self, width: int, fusion: Fusion) -> None:
        super().__init__()
        self.fusion = fusion
        self.norm = nn.BatchNorm1d(width)
        self.f1, self.f2, self.g = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        a, b = self.act(self.f1(h)), self.f2(h)
        return x + self.g(a * b if self.fusion == "star" else a + b)


class ToyNet(nn.Module):
    """``Linear(2, width)``, ``depth`` ``ToyBlock``s, ``Linear(width, 2)``: two of these differ only in ``fusion``.

    With ``seed``, weights are drawn from that seed without touching the global generator, so a star net and a sum
    net built from one seed start from identical parameters.
    """

    def __init__(self, width: int, depth: int, fusion: Fusion, seed: int | None = None) -> None:
        _check(width=width, depth=depth, fusion=fusion)
        super().__init__()
        self.width, self.depth, self.fusion = width, depth, fusion
        with _seeded(seed):
            self.stem = nn.Linear(2, width)
            self.blocks = nn.Sequential(*(ToyBlock(width, fusion) for _ in range(depth)))
            self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@dataclass
class ToyResult:
    """One trained net and how it did."""

    fusion: str
    width: int
    depth: int
    seed: int
    steps: int
    test_acc: float
    train_acc: float
    seconds: float
    model: ToyNet


@torch.no_grad()
def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).float().mean())


def train_toy(data: ToyData, width: int, depth: int, fusion: Fusion, steps: int = DEFAULT_STEPS, seed: int = 0,
              lr: float = DEFAULT_LR) -> ToyResult:
    """Full-batch Adam on ``data``'s training split; the seed fixes the initial weights, so runs are repeatable.

    Full batch because the sets are a few hundred points: there is no sampling noise to blur the comparison, and it
    takes well under a second at the default sizes.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    model = ToyNet(width, depth, fusion, seed=seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    return ToyResult(fusion, width, depth, seed, steps, _accuracy(model, data.x_test, data.y_test),
                     _accuracy(model, data.x_train, data.y_train), seconds, model)


def decision_figure(star: ToyResult, sum_: ToyResult, data: ToyData, resolution: int = 200) -> np.ndarray:
    """Both decision boundaries side by side (star left, sum right) over the test points, as an RGB uint8 image.

    The shading is P(class 1) on a grid around the data; the black line is the 0.5 level. A bare ``Figure`` on an Agg
    canvas (no pyplot) leaves no global figure to close and no backend switch behind.
    """
    if (star.fusion, sum_.fusion) != ("star", "sum"):
        raise ValueError(f"expected a star result then a sum result, got {star.fusion!r} then {sum_.fusion!r}")
    pts = np.concatenate([data.x_train, data.x_test])
    (x0, y0), (x1, y1) = pts.min(0) - 0.3, pts.max(0) + 0.3
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32))
    fig = Figure(figsize=(10, 4.8), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    for ax, r, op in zip(fig.subplots(1, 2), (star, sum_), ("x", "+"), strict=True):
        with torch.no_grad():
            p = r.model(grid).softmax(1)[:, 1].reshape(gx.shape).numpy()
        ax.contourf(gx, gy, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(data.x_test[:, 0], data.x_test[:, 1], c=data.y_test, cmap="RdBu_r", vmin=0, vmax=1,
                   s=12, edgecolors="k", linewidths=0.4)
        ax.set_title(f"{r.fusion} ({op}): test acc {r.test_acc:.1%}\nwidth {r.width}, depth {r.depth}")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{data.name}, noise {data.noise:g}: {len(data.x_train)} train / {len(data.x_test)} test points")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def compare(name: str, width: int, depth: int, noise: float | None = None, n: int = DEFAULT_N,
            steps: int = DEFAULT_STEPS, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Train star and sum on the same draw of ``name`` from the same seed and steps; a summary and the figure."""
    _check(name=name, noise=noise, width=width, depth=depth)
    data = toy_data(name, n, noise, seed)
    star, sum_ = (train_toy(data, width, depth, f, steps, seed) for f in FUSIONS)
    summary = {
        "dataset": name, "noise": data.noise, "width": width, "depth": depth, "seed": seed, "steps": steps,
        "star_test_acc": star.test_acc, "sum_test_acc": sum_.test_acc, "diff": star.test_acc - sum_.test_acc,
        "star_train_acc": star.train_acc, "sum_train_acc": sum_.train_acc,
        "params": sum(p.numel() for p in star.model.parameters()),
    }
    return summary, decision_figure(star, sum_, data)


def cpu_name() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo, or ``"unknown"`` where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def sweep(datasets: Sequence[str] = DATASETS, widths: Sequence[int] = (2, 4, 8, 16), depths: Sequence[int] = (1, 2),
          seeds: Sequence[int] = (0, 1, 2), n: int = DEFAULT_N, steps: int = DEFAULT_STEPS) -> dict:
    """Mean test accuracy of star and sum per (dataset, width, depth) over ``seeds``, and the paired difference.

    Each seed draws its own data and initial weights, shared by the star and the sum net, so the per-seed
    ``star - sum`` differences are paired; ``diff_se`` is their standard error (sample sd / sqrt(seeds)). The load
    average at the start is recorded because ``seconds`` means little on a shared machine without it.
    """
    for name in datasets:
        _check(name=name)
    for w in widths:
        _check(width=w)
    for d in depths:
        _check(depth=d)
    if len(set(seeds)) < 2:
        raise ValueError(f"sweep needs at least 2 distinct seeds for a standard error, got {list(seeds)}")
    load = [round(v, 2) for v in os.getloadavg()]
    start = time.perf_counter()
    cells = []
    for name in datasets:
        draws = {s: toy_data(name, n, None, s) for s in seeds}
        for width in widths:
            for depth in depths:
                acc = {f: [train_toy(draws[s], width, depth, f, steps, s).test_acc for s in seeds] for f in FUSIONS}
                diff = np.array(acc["star"]) - np.array(acc["sum"])
                se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
                cells.append({
                    "dataset": name, "width": width, "depth": depth,
                    "star_acc": float(np.mean(acc["star"])), "sum_acc": float(np.mean(acc["sum"])),
                    "diff": float(diff.mean()), "diff_se": se,
                    "star_per_seed": acc["star"], "sum_per_seed": acc["sum"],
                })
    return {
        "what": "test accuracy of ToyNet with star (*) vs sum (+) fusion, same data, seed, init and steps",
        "cpu": cpu_name(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "settings": {"n": n, "test_fraction": 0.5, "steps": steps, "lr": DEFAULT_LR, "optimizer": "Adam, full batch",
                     "noise": {d: DEFAULT_NOISE[d] for d in datasets}, "seeds": list(seeds)},
        "seconds": round(time.perf_counter() - start, 1), "load_average_1_5_15min": load, "cpu_count": os.cpu_count(),
        "cells": cells,
    }


def format_table(result: dict) -> str:
    """The sweep as a Markdown table: one row per cell."""
    rows = ["| dataset | width | depth | star acc | sum acc | star - sum (± se) |", "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {c['dataset']} | {c['width']} | {c['depth']} | {c['star_acc']:.3f} | {c['sum_acc']:.3f} | "
             f"{c['diff']:+.3f} ± {c['diff_se']:.3f} |" for c in result["cells"]]
    return "\n".join(rows)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Sweep star vs sum fusion on 2D toy sets; write the result as JSON.")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write, e.g. docs/explain/toy.json")
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--n", type=int, default=DEFAULT_N)
    args = parser.parse_args()
    result = sweep(DATASETS, args.widths, args.depths, args.seeds, args.n, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"{result['seconds']} s on {result['cpu']}; wrote {args.out}")

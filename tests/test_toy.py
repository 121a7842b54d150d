"""The star-vs-sum toy: data generators, the two nets differing only in the operator, training, figure, validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from starnet_demo.explain.toy import (
    DATASETS,
    ToyNet,
    compare,
    decision_figure,
    make_data,
    split,
    sweep,
    toy_data,
    train_toy,
)


@pytest.mark.parametrize("name", DATASETS)
def test_make_data_shapes_labels_and_determinism(name):
    x, y = make_data(name, 101, 0.1, seed=3)
    assert x.shape == (101, 2) and x.dtype == np.float32
    assert y.shape == (101,) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1} and abs(int(y.sum()) - 50) <= 1  # balanced
    assert np.isfinite(x).all()
    x2, y2 = make_data(name, 101, 0.1, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(make_data(name, 101, 0.1, seed=4)[0], x)


def test_noise_moves_points_and_zero_noise_is_exact_geometry():
    x0, y0 = make_data("circles", 200, 0.0, seed=0)
    radius = np.linalg.norm(x0, axis=1)
    np.testing.assert_allclose(radius, np.where(y0 == 0, 1.0, 0.5), atol=1e-6)
    x1, _ = make_data("circles", 200, 0.2, seed=0)
    assert not np.allclose(x0, x1)


def test_split_partitions_the_points():
    x, y = make_data("moons", 100, 0.1, seed=0)
    xtr, ytr, xte, yte = split(x, y, 0.3, seed=0)
    assert (len(xtr), len(xte)) == (70, 30)
    rows = {tuple(r) for r in np.concatenate([xtr, xte]).tolist()}
    assert rows == {tuple(r) for r in x.tolist()}
    data = toy_data("moons", 100, 0.1, seed=0)
    assert data.x_train.shape == (50, 2) and data.y_test.shape == (50,)


def test_star_and_sum_differ_only_in_the_operator():
    star, sum_ = ToyNet(8, 2, "star", seed=0), ToyNet(8, 2, "sum", seed=0)
    s, t = star.state_dict(), sum_.state_dict()
    assert s.keys() == t.keys()
    assert all(torch.equal(s[k], t[k]) for k in s)
    assert sum(p.numel() for p in star.parameters()) == sum(p.numel() for p in sum_.parameters())
    assert [type(m) for m in star.modules()] == [type(m) for m in sum_.modules()]
    # Same weights, different operator: the outputs must differ, and match the block formula by hand.
    star.eval()
    sum_.eval()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(star(x), sum_(x))
    with torch.no_grad():
        h = star.stem(x)
        for block in star.blocks:
            n = block.norm(h)
            h = h + block.g(torch.relu(block.f1(n)) * block.f2(n))
        torch.testing.assert_close(star(x), star.head(h))


def test_seed_leaves_global_rng_alone_and_differs_between_seeds():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = ToyNet(4, 1, "star", seed=0)
    assert torch.equal(torch.rand(3), expected)
    b = ToyNet(4, 1, "star", seed=1)
    assert not torch.equal(a.stem.weight, b.stem.weight)


@pytest.mark.parametrize("fusion", ["star", "sum"])
def test_training_on_moons_is_well_above_chance(fusion):
    data = toy_data("moons", 300, 0.1, seed=0)
    result = train_toy(data, width=8, depth=1, fusion=fusion, steps=150, seed=0)
    assert result.test_acc > 0.9 and result.train_acc > 0.9  # chance is 0.5
    assert result.seconds > 0 and not result.model.training
    again = train_toy(data, width=8, depth=1, fusion=fusion, steps=150, seed=0)
    assert again.test_acc == result.test_acc  # seeded and full batch: repeatable


def test_compare_returns_summary_and_rgb_figure():
    summary, image = compare("circles", 4, 1, noise=0.05, n=200, steps=60, seed=0)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.shape[0] > 100 and image.shape[1] > 2 * 100
    assert image.std() > 10  # something was drawn
    assert summary["dataset"] == "circles" and summary["width"] == 4 and summary["depth"] == 1
    assert summary["diff"] == pytest.approx(summary["star_test_acc"] - summary["sum_test_acc"])
    for key in ("star_test_acc", "sum_test_acc"):
        assert 0.0 <= summary[key] <= 1.0


def test_decision_figure_wants_star_then_sum():
    data = toy_data("moons", 60, 0.1, seed=0)
    star, sum_ = (train_toy(data, 2, 1, f, steps=2) for f in ("star", "sum"))
    with pytest.raises(ValueError, match="star result then a sum"):
        decision_figure(sum_, star, data)


def test_sweep_cell_statistics():
    result = sweep(["moons"], [2], [1], [0, 1], n=60, steps=5)
    (cell,) = result["cells"]
    diffs = np.array(cell["star_per_seed"]) - np.array(cell["sum_per_seed"])
    assert cell["diff"] == pytest.approx(diffs.mean())
    assert cell["diff_se"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(2))
    assert cell["star_acc"] == pytest.approx(np.mean(cell["star_per_seed"]))
    # the record says what ran and where: the settings given, and this machine's CPU as /proc/cpuinfo names it
    assert (result["settings"]["n"], result["settings"]["steps"], result["settings"]["seeds"]) == (60, 5, [0, 1])
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    assert result["cpu"] == (names[0] if names else "unknown")
    assert (result["cpu_count"], result["torch_threads"]) == (os.cpu_count(), torch.get_num_threads())


@pytest.mark.parametrize(("call", "message"), [
    (lambda: make_data("blobs", 100, 0.1, 0), "unknown dataset"),
    (lambda: make_data("moons", 100, 1.5, 0), "noise"),
    (lambda: make_data("moons", 100, -0.1, 0), "noise"),
    (lambda: split(*make_data("moons", 100, 0.1, 0), 0.99), "under 2 training points"),
    (lambda: ToyNet(0, 1, "star"), "width"),
    (lambda: ToyNet(257, 1, "star"), "width"),
    (lambda: ToyNet(4, 0, "sum"), "depth"),
    (lambda: ToyNet(4, 7, "sum"), "depth"),
    (lambda: ToyNet(4, 1, "product"), "fusion"),
    (lambda: compare("spiral", 4, 1), "unknown dataset"),
    (lambda: compare("moons", 300, 1), "width"),
    (lambda: compare("moons", 4, 9), "depth"),
    (lambda: compare("moons", 4, 1, noise=2.0), "noise"),
    (lambda: sweep(["moons"], [0], [1], [0, 1]), "width"),
    (lambda: sweep(["moons"], [4], [1], [0]), "2 distinct seeds"),
])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)

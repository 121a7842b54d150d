"""Growing trained weights into a wider and deeper variant (Net2Net): the grown model computes the source's function,
refused growths say why in one line, and the weights record how they were made."""

from __future__ import annotations

import json

import pytest
import torch
from app_support import with_real_batchnorms

from starnet_demo.cli import main
from starnet_demo.models.yolo import backbone
from starnet_demo.training.grow import check_growth, grow
from starnet_demo.weights.files import load_weights, save_weights, sha256_file

# Float32 sums in a different order (copied channels divided, then summed again): outputs of order 10 agree to
# about 1e-5 relative; 1e-4 of the largest output leaves a margin and still catches any wrong channel.
RTOL = 1e-4


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.rand(2, 3, 96, 128)


@pytest.fixture(scope="module")
def s1():
    return with_real_batchnorms("s1", seed=3)


@pytest.mark.parametrize("path", [("s3",), ("s4",), ("s3", "s4")], ids=["s1-s3", "s1-s4", "s1-s3-s4"])
def test_grown_model_computes_the_source_function(s1, x, path):
    want = outputs(s1, x)
    model = s1
    for target in path:
        model = grow(model, target)
        assert backbone(model).variant == target
    got = outputs(model, x)
    assert got.shape == want.shape
    err = (got - want).abs().max() / want.abs().max()
    assert err < RTOL, float(err)


def test_new_blocks_are_the_identity_and_new_channels_copies(s1):
    grown = grow(s1, "s3")
    stage = backbone(grown).body.stages_3
    assert len(stage) - 1 == 4 and not stage[-1].dwconv2.conv.weight.any()  # S1 has 3 blocks there, S3 has 4
    # stage 0 goes from 24 to 32 channels: each new output channel of the downsampling conv copies an old one
    old = backbone(s1).body.stages_0[0].conv.weight
    new = backbone(grown).body.stages_0[0].conv.weight
    assert torch.equal(new[:24], old) and all(any(torch.equal(row, o) for o in old) for row in new[24:])


def test_noise_breaks_the_symmetry_of_copies(s1, x):
    quiet, noisy = grow(s1, "s3", noise=0.0, seed=0), grow(s1, "s3", noise=0.02, seed=0)
    q = backbone(quiet).body.stages_1[1].f1.conv.weight
    n = backbone(noisy).body.stages_1[1].f1.conv.weight
    assert not torch.equal(q, n)
    ratio = (n - q).std() / q.std()
    assert 0.01 < ratio < 0.03  # 2 % of the weights' spread
    with torch.no_grad():  # the old channels of P5 (the first 192 of 256) no longer carry the same values
        want, got = backbone(s1)(x)[-1], backbone(noisy)(x)[-1][:, :192]
    assert (got - want).abs().max() > 100 * RTOL * want.abs().max()


@pytest.mark.parametrize(("source", "target", "reason"), [
    ("s1", "s2", "s2 has fewer blocks per stage"),
    ("s3", "s1", "s1 has fewer channels per stage"),
    ("s4", "s3", "s3 has fewer blocks per stage"),
    ("s1", "s1", "cannot grow s1 into itself"),
    ("s1", "s150", "s150 has fewer blocks per stage"),
])
def test_growth_that_cannot_keep_the_function_is_refused(source, target, reason):
    with pytest.raises(ValueError, match=reason):
        check_growth(source, target)


def test_cli_refuses_in_one_line(tmp_path, capsys):
    assert main(["grow", "--from", "s3", "--to", "s2", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot grow s3 into s2") and err.count("\n") == 1
    assert not (tmp_path / "g").exists()


def test_cli_writes_weights_with_the_growth_in_the_recipe(s1, x, tmp_path, capsys):
    src = save_weights(s1, tmp_path / "src", meta={"recipe": [{"stage": "distill", "epochs": 3}]})
    assert main(["grow", "--from", "s1", "--to", "s4", "--weights", str(src.parent), "--noise", "0.01",
                 "--seed", "5", "--out", str(tmp_path / "grown")]) == 0
    out = tmp_path / "grown" / "s4.json"
    assert capsys.readouterr().out.strip() == str(out)
    config = json.loads(out.read_text())
    assert config["variant"] == "s4" and "metrics" not in config  # the source's figures are not the grown model's
    assert config["recipe"][0] == {"stage": "distill", "epochs": 3}
    step = config["recipe"][-1]
    assert {k: step[k] for k in ("stage", "from", "to", "noise", "seed")} == {
        "stage": "grow", "from": "s1", "to": "s4", "noise": 0.01, "seed": 5}
    assert step["source_sha256"] == sha256_file(src.with_suffix(".safetensors"))
    model, _ = load_weights(out)
    assert backbone(model).variant == "s4"

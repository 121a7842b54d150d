"""Training through ultralytics' trainer (distill and finetune stages, and ``as_yolo(model).train``), with the
pieces they rest on: the feature loss, BatchNorm recalibration and the merged dataset."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file
from torch import nn
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.patches import torch_load

from starnet_demo import BASELINE, as_yolo, build_model
from starnet_demo.cli import main
from starnet_demo.models.yolo import COCO_NAMES, OWN_TEACHER_START, init_from_teacher
from starnet_demo.training import train as train_module
from starnet_demo.training.data import prepare_data
from starnet_demo.training.distill import (
    feature_loss,
    output_loss,
    recalibrate_bn,
    reestimate_bn,
    reestimate_bn_if_better,
)
from starnet_demo.training.train import RUN_NOTES, StarNetTrainer, train
from starnet_demo.weights.files import load_weights

# Overfit the 8 fixture images: one batch per epoch, an optimizer step every batch, no warm-up, no augmentation.
OVERFIT = dict(imgsz=128, batch=8, nbs=8, workers=0, device="cpu", optimizer="AdamW", lr0=0.01, warmup_epochs=0,
               mosaic=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=0.0, translate=0.0, scale=0.0, erasing=0.0,
               plots=False, verbose=False, seed=0, deterministic=True)


def _results(run_dir: Path) -> dict[str, list[float]]:
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k.strip(): [float(r[k]) for r in rows] for k in rows[0]}


def _falls(losses: list[float], factor: float = 0.7) -> bool:
    """The mean of the last two epochs is well below the mean of the first two."""
    return np.mean(losses[-2:]) < factor * np.mean(losses[:2])


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, shapes_data, teacher_file) -> Path:
    project = tmp_path_factory.mktemp("runs")
    return train("s050", str(shapes_data), stage="distill", teacher=str(teacher_file), project=str(project),
                 name="distill", epochs=12, **OVERFIT)


def test_distill_feature_loss_falls(distilled, teacher_file):
    results = _results(distilled.parent.parent)
    assert len(results["epoch"]) == 12
    for level in ("p3", "p4", "p5"):
        assert _falls(results[f"train/{level}"]), (level, results[f"train/{level}"])

    model, config = load_weights(distilled)
    assert [step["stage"] for step in config["recipe"]] == ["distill"]
    assert config["recipe"][0]["teacher"] == teacher_file.name
    # The teacher's SPPF, neck and head (ours 7..20) were copied and frozen; only the class branch, whose width
    # follows the class count (2 here, 80 in the teacher), is the student's own.
    teacher, own = load_file(str(teacher_file)), model.state_dict()
    for key, value in teacher.items():
        layer = int(key.split(".")[1])
        if layer >= 9 and not key.startswith("model.22.cv3.") and value.is_floating_point():
            ours = own[f"model.{layer - 2}.{key.split('.', 2)[2]}"]
            torch.testing.assert_close(ours, value.half().float(), rtol=1e-3, atol=1e-4, msg=key)


def test_finetune_after_distill_detection_loss_falls(distilled, shapes_data, tmp_path):
    out = train("s050", str(shapes_data), stage="finetune", weights=str(distilled), project=str(tmp_path),
                name="finetune", epochs=15, val=False, **OVERFIT)
    results = _results(out.parent.parent)
    for name in ("box_loss", "cls_loss", "dfl_loss"):
        assert _falls(results[f"train/{name}"]), (name, results[f"train/{name}"])
    model, config = load_weights(out)
    assert [step["stage"] for step in config["recipe"]] == ["distill", "finetune"]
    assert model.names == {0: "rectangle", 1: "ellipse"}


def test_distill_with_frozen_bn_keeps_statistics_and_trains_the_rest(distilled, shapes_data, teacher_file, tmp_path):
    start, _ = load_weights(distilled)
    out = train("s050", str(shapes_data), stage="distill", weights=str(distilled), teacher=str(teacher_file),
                project=str(tmp_path), name="frozen-bn", epochs=3, freeze_bn=True, **OVERFIT)
    model, config = load_weights(out)
    assert config["recipe"][-1]["batchnorm"] == "frozen (eval mode)"
    before, after = start.state_dict(), model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    backbone = [k for k in before if k.startswith("model.0.") and k.endswith("conv.weight")]
    assert any(not torch.equal(before[k], after[k]) for k in backbone)


def test_distill_records_whether_reestimated_statistics_were_kept(distilled, shapes_data, teacher_file, tmp_path):
    start, _ = load_weights(distilled)
    out = train("s050", str(shapes_data), stage="distill", weights=str(distilled), teacher=str(teacher_file),
                project=str(tmp_path), name="reestimate", epochs=1, freeze_bn=True, reestimate_bn=True, **OVERFIT)
    model, config = load_weights(out)
    found = re.fullmatch(r"(re-estimated in eval mode|re-estimation undone) \(eval-mode feature loss (\S+) -> (\S+) "
                         r"on 8 images\), then frozen \(eval mode\)", config["recipe"][-1]["batchnorm"])
    assert found, config["recipe"][-1]["batchnorm"]
    kept = found[1] == "re-estimated in eval mode"
    assert kept == (float(found[3]) < float(found[2]))
    before, after = start.state_dict(), model.state_dict()  # frozen while training: only re-estimation moves them
    stats = [k for k in before if k.startswith("model.0.") and k.endswith("running_var")]
    assert stats and kept == any(not torch.equal(before[k], after[k]) for k in stats)


class _Interrupted(Exception):
    """Stands in for a killed process: raised after an epoch's checkpoint is written."""


def _interrupt_after(epochs: int, monkeypatch) -> None:
    """Make the next trainers raise ``_Interrupted`` once ``epochs`` epochs are saved, through ultralytics' own
    callbacks (until ``monkeypatch.undo()``)."""
    from ultralytics.utils.callbacks import base

    def stop(trainer):
        if trainer.epoch == epochs - 1:
            raise _Interrupted

    monkeypatch.setitem(base.default_callbacks, "on_fit_epoch_end", [*base.default_callbacks["on_fit_epoch_end"], stop])


def test_distill_resumes_where_it_stopped_and_keeps_the_recipe(distilled, shapes_data, teacher_file, tmp_path,
                                                               monkeypatch):
    _interrupt_after(2, monkeypatch)
    with pytest.raises(_Interrupted):
        train("s050", str(shapes_data), stage="distill", weights=str(distilled), teacher=str(teacher_file),
              project=str(tmp_path), name="cut", epochs=4, freeze_bn=True, **OVERFIT)
    monkeypatch.undo()
    last = tmp_path / "cut" / "weights" / "last.pt"
    assert _results(tmp_path / "cut")["epoch"] == [1, 2]

    out = train("s050", str(shapes_data), resume=str(last), device="cpu", workers=0)
    assert _results(out.parent.parent)["epoch"] == [1, 2, 3, 4]
    assert type(torch_load(last, map_location="cpu")["model"]).__name__ == "DistillStudent"  # not the detection loss
    model, config = load_weights(out)
    assert [(step["stage"], step["epochs"], step.get("batchnorm")) for step in config["recipe"]] == [
        ("distill", 12, None), ("distill", 4, "frozen (eval mode)")]
    assert config["recipe"][-1]["teacher"] == teacher_file.name
    before, after = load_weights(distilled)[0].state_dict(), model.state_dict()  # still frozen after resuming
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("running_var"))


def test_output_loss_is_zero_for_the_teachers_own_outputs_and_grows_with_the_difference():
    torch.manual_seed(0)
    teacher = {"boxes": torch.randn(2, 64, 50) * 3, "scores": torch.randn(2, 80, 50) * 4 - 4}
    assert float(output_loss(teacher, teacher, reg_max=16)) == pytest.approx(0, abs=1e-5)
    losses = [float(output_loss({k: v + noise * torch.randn_like(v) for k, v in teacher.items()}, teacher, 16))
              for noise in (0.1, 0.5, 2.0)]
    assert 0 < losses[0] < losses[1] < losses[2], losses


def test_output_kd_distills_the_heads_outputs_and_survives_a_resume(coco_shapes_data, teacher_file, tmp_path,
                                                                    monkeypatch):
    _interrupt_after(3, monkeypatch)
    with pytest.raises(_Interrupted):
        train("s050", str(coco_shapes_data), stage="distill", teacher=str(teacher_file), project=str(tmp_path),
              name="kd", epochs=8, freeze_bn=True, output_kd=0.5, **OVERFIT)
    monkeypatch.undo()
    out = train("s050", str(coco_shapes_data), resume=str(tmp_path / "kd" / "weights" / "last.pt"), device="cpu",
                workers=0)
    results = _results(out.parent.parent)
    assert results["epoch"] == list(range(1, 9))
    assert _falls(results["train/out"]), results["train/out"]
    model, config = load_weights(out)
    assert [step.get("output_kd") for step in config["recipe"]] == [0.5]
    assert _head_changed(model, teacher_file) == (False, False)  # only the backbone and adapters learnt


def _head_changed(model: nn.Module, teacher_file: Path) -> tuple[bool, bool]:
    """Whether the layers taken from the teacher (SPPF, neck, head) differ from the teacher's: (any conv, DFL)."""
    reference = build_model("s050", nc=80, names=COCO_NAMES)
    init_from_teacher(reference, load_file(teacher_file))
    ours, theirs = model.state_dict(), reference.state_dict()
    taken = [k for k in theirs if int(k.split(".")[1]) >= OWN_TEACHER_START and k.endswith("conv.weight")]
    dfl = [k for k in taken if ".dfl." in k]
    assert taken and dfl
    differs = [k for k in taken if not torch.equal(ours[k].half(), theirs[k].half())]  # weights/ stores fp16
    return any(k not in dfl for k in differs), any(k in dfl for k in differs)


def test_train_head_adapts_the_teachers_layers_and_a_later_distill_keeps_them(coco_shapes_data, teacher_file,
                                                                               tmp_path):
    out = train("s050", str(coco_shapes_data), stage="distill", teacher=str(teacher_file), project=str(tmp_path),
                name="head", epochs=2, freeze_bn=True, output_kd=0.5, train_head=True, **OVERFIT)
    model, config = load_weights(out)
    assert [step.get("train_head") for step in config["recipe"]] == [True]
    assert _head_changed(model, teacher_file) == (True, False)  # DFL's fixed projection stays
    # A later distill step without train_head starts from the trained head rather than the teacher's again.
    later = train("s050", str(coco_shapes_data), stage="distill", weights=str(out), teacher=str(teacher_file),
                  project=str(tmp_path), name="after", epochs=1, freeze_bn=True, output_kd=0.5, **OVERFIT)
    kept, trained = load_weights(later)[0].state_dict(), model.state_dict()
    neck = [k for k in trained if int(k.split(".")[1]) >= OWN_TEACHER_START]
    assert all(torch.equal(kept[k], trained[k]) for k in neck)


def test_train_head_needs_output_kd(coco_shapes_data, teacher_file, tmp_path):
    with pytest.raises(ValueError, match="train_head needs output_kd"):
        train("s050", str(coco_shapes_data), stage="distill", teacher=str(teacher_file), project=str(tmp_path),
              epochs=1, train_head=True, **OVERFIT)


def test_output_kd_needs_the_teachers_classes(shapes_data, teacher_file, tmp_path):
    with pytest.raises(ValueError, match="output_kd needs the teacher's classes: the data has 2, the teacher 80"):
        train("s050", str(shapes_data), stage="distill", teacher=str(teacher_file), project=str(tmp_path),
              epochs=1, output_kd=1.0, **OVERFIT)


def test_earlier_seconds_sums_the_processes_before_a_resume(tmp_path):
    from starnet_demo.training.train import _earlier_seconds

    csv_file = tmp_path / "results.csv"
    csv_file.write_text("epoch,time,train/p3\n1,10,0.9\n2,20,0.8\n3,4,0.7\n4,9,0.6\n")  # resumed after epoch 2
    assert _earlier_seconds(csv_file) == 29
    assert _earlier_seconds(tmp_path / "missing.csv") == 0


class _PacedTrainer:
    """What ``EpochBudget`` reads and sets on ultralytics' trainer, with its real scheduler, on a fake clock."""

    def __init__(self, iterations: int, lr0: float = 0.01) -> None:
        self.args = type("Args", (), {"epochs": train_module.BUDGET_EPOCHS, "cos_lr": True, "lrf": 0.05})()
        self.epochs, self.epoch, self.start_epoch, self.batch_size = self.args.epochs, 0, 0, 16
        self.train_loader, self.train_time_start = range(iterations), 0.0
        self.optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr0)
        self._setup_scheduler()
        self.scheduler.step()  # the loop's step at the start of epoch 0

    _setup_scheduler = DetectionTrainer._setup_scheduler

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def test_a_time_budget_sizes_whole_epochs_once_on_one_cosine_schedule(monkeypatch):
    """0.5 s per iteration, 20 per epoch, 100 s: 9 whole epochs fit (5 % kept for saving), decided during the first
    one, with the schedule of a 9-epoch run from then on, ending at lr0 * lrf; a later slowdown cuts the epochs to
    what still fits. Ultralytics' ``time=`` instead rebuilds the schedule after every epoch."""
    from starnet_demo.training.train import EpochBudget

    clock = iter(float(t) for t in range(10_000))
    monkeypatch.setattr(train_module.time, "time", lambda: next(clock) * 0.5)
    trainer, budget = _PacedTrainer(iterations=20), EpochBudget(100, skip=3, measure=10)
    for _ in range(13):
        budget.on_train_batch_end(trainer)
    assert trainer.epochs == budget.decided["epochs"] == 9 and budget.decided["seconds_per_iteration"] == 0.5
    assert budget.decided["images_per_second"] == 32
    reference = _PacedTrainer(iterations=20)
    reference.epochs = 9
    reference._setup_scheduler()
    reference.scheduler.step()
    assert trainer.lr() == pytest.approx(reference.lr())
    for epoch in range(1, 9):
        trainer.epoch = epoch
        trainer.scheduler.step()
        reference.scheduler.step()
        assert trainer.lr() == pytest.approx(reference.lr())
    assert trainer.lr() == pytest.approx(0.01 * 0.05)

    slow, budget = _PacedTrainer(iterations=20), EpochBudget(100, skip=3, measure=10)
    for _ in range(13):
        budget.on_train_batch_end(slow)
    # The first epoch's end is not a pace (it holds the run's start-up): epoch 0 ends 40 s in, 30 s late, no cut.
    planned = slow.epochs
    monkeypatch.setattr(train_module.time, "time", lambda: 40.0)
    budget.on_train_epoch_end(slow)
    assert slow.epochs == planned > 2 and "resized" not in budget.decided
    slow.epoch = 1  # then epoch 1 takes 40 s, not 10: one more (40 s) fits the 100
    monkeypatch.setattr(train_module.time, "time", lambda: 80.0)
    budget.on_train_epoch_end(slow)
    assert slow.epochs == 2 and budget.decided["resized"] == [{"after_epoch": 2, "epochs": 2}]


def test_a_time_budget_needs_an_explicit_optimizer(shapes_data, tmp_path):
    with pytest.raises(ValueError, match="explicit optimizer"):
        train("s050", str(shapes_data), stage="finetune", budget_s=6, project=str(tmp_path), optimizer="auto")


def test_cpu_training_uses_every_core(shapes_data, tmp_path):
    """Ultralytics sets torch to cores - 1 threads for CPU training and then loads data in the same process."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        trainer = StarNetTrainer(overrides={"data": str(shapes_data), "model": "yolov8n.yaml", "device": "cpu",
                                            "project": str(tmp_path), "workers": 1})
        assert trainer.args.workers == 0
        assert torch.get_num_threads() == os.cpu_count()
    finally:
        torch.set_num_threads(threads)


class OneWorkerLaunch(StarNetTrainer):
    """Ultralytics' multi-GPU launch (``--device 0,1``) with one CPU worker: the launcher pickles this trainer, its
    model and callbacks, empties the run folder and starts ``torch.distributed.run``; the worker trains in a gloo
    process group, as it would in an NCCL one on GPUs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The environment, read now: cloudpickle may ship this class by value, with the launcher's globals.
        if "LOCAL_RANK" not in os.environ:
            self.ddp, self.world_size = True, 1
        elif not dist.is_initialized():
            dist.init_process_group("gloo")


def test_multi_gpu_launch_exports_what_its_worker_trained(distilled, shapes_data, teacher_file, tmp_path,
                                                           monkeypatch):
    """The launching process never trains, so the epochs and metrics come from the worker's files, and the resume
    notes must be written by the worker (the launch deletes the run folder first)."""
    monkeypatch.setattr(train_module, "StarNetTrainer", OneWorkerLaunch)
    out = train("s050", str(shapes_data), stage="distill", weights=str(distilled), teacher=str(teacher_file),
                project=str(tmp_path), name="ddp", epochs=2, freeze_bn=True, **OVERFIT)
    run = tmp_path / "ddp"
    assert out == run / "export" / "s050.json"
    assert _results(run)["epoch"] == [1, 2]
    config = load_weights(out)[1]
    step = config["recipe"][-1]
    assert (step["stage"], step["epochs"], step["batchnorm"]) == ("distill", 2, "frozen (eval mode)")
    assert (config["imgsz"], step["imgsz"]) == (640, 128)  # run at 640, as evaluated; trained at 128
    assert step["val_metrics"] and all(k.startswith(("metrics/", "val/")) for k in step["val_metrics"])
    notes = json.loads((run / RUN_NOTES).read_text())
    assert notes["teacher"] == str(teacher_file.resolve()) and notes["recipe"][-1]["stage"] == "distill"


def test_frozen_bn_student_keeps_batchnorms_in_eval_mode():
    from starnet_demo.training.distill import DistillStudent

    model = build_model("s050", cls=DistillStudent)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    # The teacher's layers (SPPF, neck, head: 7 on) always run as deployed; the student's own train normally.
    own = [m for layer in model.model[:7] for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    teachers = [m for layer in model.model[7:] for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    assert own and teachers and all(bn.training for bn in own) and not any(bn.training for bn in teachers)
    model.freeze_bn = True
    model.train()
    assert model.training and model.model[0].training and not any(bn.training for bn in bns)


def test_cli_refuses_frozen_bn_outside_distill(shapes_data, tmp_path, capsys):
    assert main(["train", "--variant", "s050", "--stage", "finetune", "--freeze-bn", "--data", str(shapes_data),
                 "--project", str(tmp_path)]) == 2
    assert ("--freeze-bn, --reestimate-bn, --output-kd and --train-head apply to the distill stage only"
            in capsys.readouterr().err)
    assert main(["train", "--variant", "s050", "--stage", "distill", "--reestimate-bn", "--data", str(shapes_data),
                 "--project", str(tmp_path)]) == 2
    assert "--reestimate-bn needs trained weights" in capsys.readouterr().err
    assert main(["train", "--variant", "s050", "--stage", "distill,finetune", "--resume", str(tmp_path / "last.pt"),
                 "--data", str(shapes_data)]) == 2
    assert "--resume continues one run" in capsys.readouterr().err


def test_cli_applies_distill_flags_to_the_distill_stage_of_a_two_stage_run(shapes_data, teacher_file, tmp_path,
                                                                          capsys):
    assert main(["train", "--variant", "s050", "--stage", "distill,finetune", "--freeze-bn", "--data",
                 str(shapes_data), "--teacher", str(teacher_file), "--epochs", "1", "--imgsz", "128", "--batch", "8",
                 "--device", "cpu", "--workers", "0", "--project", str(tmp_path), "--set", "lrf=0.07",
                 "--set", "save_period=1", "plots=False"]) == 0
    final = Path(capsys.readouterr().out.strip().splitlines()[-1])
    recipe = load_weights(final)[1]["recipe"]
    assert [(step["stage"], step.get("batchnorm")) for step in recipe] == [("distill", "frozen (eval mode)"),
                                                                          ("finetune", None)]
    # Both --set flags reach both stages (a repeated flag used to replace the earlier one).
    runs = [p.parent for p in tmp_path.rglob("args.yaml")]
    assert len(runs) == 2
    for run in runs:
        args = yaml.safe_load((run / "args.yaml").read_text())
        assert (args["lrf"], args["save_period"]) == (0.07, 1) and (run / "weights" / "epoch0.pt").is_file()


def test_cli_train_without_data_or_resume_is_one_line(capsys):
    assert main(["train", "--variant", "s050", "--stage", "distill"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train needs --data" in err[0]


def test_cli_set_without_a_value_is_one_line(shapes_data, capsys):
    assert main(["train", "--variant", "s050", "--data", str(shapes_data), "--set", "plots=False", "save_period"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set takes KEY=VALUE" in err[0] and "'save_period'" in err[0]


def test_as_yolo_trains_the_given_model(shapes_data, tmp_path):
    torch.manual_seed(5)
    model = build_model("s050", nc=2, names={0: "rectangle", 1: "ellipse"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # no fresh build could start from these
    start = {k: v.clone() for k, v in model.state_dict().items()}
    yolo = as_yolo(model)
    seen = {}

    def check_start(trainer):
        trained = trainer.model.state_dict()
        seen["same"] = all(torch.equal(trained[k], v) for k, v in start.items() if "num_batches" not in k)

    yolo.add_callback("on_pretrain_routine_end", check_start)
    yolo.train(data=str(shapes_data), epochs=10, project=str(tmp_path), name="yolo", val=False, **OVERFIT)
    assert seen == {"same": True}
    results = _results(tmp_path / "yolo")
    total = [sum(x) for x in zip(*(results[f"train/{n}"] for n in ("box_loss", "cls_loss", "dfl_loss")), strict=True)]
    assert _falls(total), total


def test_feature_loss_scale():
    torch.manual_seed(0)
    target = torch.randn(4, 8, 6, 6) * 3 + 1
    guess = target.mean(dim=(0, 2, 3), keepdim=True).expand_as(target)
    torch.testing.assert_close(feature_loss([guess], [target]), torch.ones(1), rtol=0.02, atol=0)
    assert feature_loss([target, target], [target, target]).tolist() == [0.0, 0.0]


def _fold_half(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Make every other BatchNorm look like the teacher's (identity plus bias); the rest get ordinary statistics."""
    g = torch.Generator().manual_seed(0)
    folded = []
    with torch.no_grad():
        for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.bias.copy_(torch.randn(n, generator=g) * 0.3)
            if i % 2 == 0:
                bn.weight.fill_(1)
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
                folded.append(bn)
            else:
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return folded


def _bn_inputs(model: nn.Module, bns: list[nn.BatchNorm2d], batches: list[torch.Tensor]) -> dict:
    """Each BatchNorm's inputs over the batches in eval mode, as a (channels, values) float64 matrix."""
    inputs: dict[nn.Module, list[torch.Tensor]] = {bn: [] for bn in bns}
    handles = [bn.register_forward_pre_hook(lambda m, a: inputs[m].append(a[0].double())) for bn in bns]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    return {bn: torch.cat([t.permute(1, 0, 2, 3).reshape(t.shape[1], -1) for t in ts], dim=1)
            for bn, ts in inputs.items()}


@pytest.mark.parametrize("only_folded", [True, False])
def test_recalibrate_bn_keeps_eval_function_and_takes_real_statistics(only_folded, bus_tensor):
    model = build_model(BASELINE).eval()
    folded = _fold_half(model)
    all_bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    changed = folded if only_folded else all_bns
    untouched = {bn: [t.clone() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)]
                 for bn in all_bns if bn not in changed}
    torch.manual_seed(1)
    batches = [bus_tensor[..., :128, :128].repeat(2, 1, 1, 1), torch.rand(2, 3, 128, 128), bus_tensor[..., 128:, 128:]]
    with torch.no_grad():
        before = [model(b)[0] for b in batches]

    # Each BatchNorm's real inputs (unchanged by the recalibration, since everything upstream keeps its function).
    inputs = _bn_inputs(model, changed, batches)

    assert recalibrate_bn(model, iter(batches), only_folded=only_folded) == len(changed)
    assert not model.training
    with torch.no_grad():
        for b, want in zip(batches, before, strict=True):
            got = model(b)[0]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    for bn in changed:
        torch.testing.assert_close(bn.running_mean.double(), inputs[bn].mean(dim=1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(bn.running_var.double(), inputs[bn].var(dim=1, unbiased=False), rtol=1e-3, atol=1e-4)
    for bn, values in untouched.items():
        assert all(torch.equal(a, b) for a, b in zip(values, (bn.weight, bn.bias, bn.running_mean, bn.running_var),
                                                         strict=True))


def test_reestimate_bn_takes_eval_mode_input_statistics_in_scope_only(bus_tensor):
    model = build_model("s050").eval()
    _fold_half(model)  # statistics that match nothing
    scope = model.model[:7]
    inside = [m for m in scope.modules() if isinstance(m, nn.BatchNorm2d)]
    outside = {m: (m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d) and all(m is not b for b in inside)}
    torch.manual_seed(2)
    batches = [bus_tensor[..., :128, :128].repeat(2, 1, 1, 1), torch.rand(3, 3, 128, 128)]

    assert reestimate_bn(model, batches, scope) == len(inside)
    assert not model.training
    inputs = _bn_inputs(model, inside, batches)  # what each sees deployed, everything upstream re-estimated too
    for bn in inside:
        torch.testing.assert_close(bn.running_mean.double(), inputs[bn].mean(dim=1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), inputs[bn].var(dim=1, unbiased=False), rtol=1e-4, atol=1e-5)
    assert outside and all(torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
                           for m, (mean, var) in outside.items())


def test_reestimate_bn_if_better_keeps_an_improvement_and_undoes_a_loss():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3)
    batches = [torch.rand(2, 3, 16, 16) * 5 + 2 for _ in range(2)]
    with torch.no_grad():
        inputs = torch.cat([conv(x) for x in batches])
    standardised = {id(x): (conv(x) - inputs.mean(dim=(0, 2, 3), keepdim=True))
                    / torch.sqrt(inputs.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5) for x in batches}

    def to_standardised(model, xs):  # reached exactly by statistics that match the inputs
        return sum(float(((model(x) - standardised[id(x)]) ** 2).mean()) for x in xs)

    model = nn.Sequential(conv, nn.BatchNorm2d(4)).eval()  # fresh statistics (0, 1): they match nothing
    before, after, kept = reestimate_bn_if_better(model, batches, None, to_standardised)
    assert kept and after < 1e-6 < before
    torch.testing.assert_close(model[1].running_var, inputs.var(dim=(0, 2, 3), unbiased=False))

    with torch.no_grad():
        model[1].running_var.mul_(3)
        trained = {id(x): model(x) for x in batches}
    stats = (model[1].running_mean.clone(), model[1].running_var.clone())

    def to_trained(model, xs):  # the function the statistics were trained for: re-estimating moves away from it
        return sum(float(((model(x) - trained[id(x)]) ** 2).mean()) for x in xs)

    before, after, kept = reestimate_bn_if_better(model, batches, None, to_trained)
    assert not kept and before == 0 < after
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])


def test_recalibrate_bn_nothing_folded_is_a_no_op():
    model = build_model("s050")  # fresh BatchNorms: variance 1, not 1 - eps
    assert recalibrate_bn(model, iter(())) == 0


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 16, 3), 127, np.uint8))
    label = Path(str(path.parent).replace("images", "labels")) / f"{path.stem}.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("0 0.5 0.5 0.25 0.25\n")


@pytest.fixture
def shared_tree(tmp_path) -> Path:
    """A miniature of ../shared/datasets: coco-mini (train + held-out val, with data.yaml) and a distill pool."""
    root = tmp_path / "datasets"
    coco = root / "coco-mini"
    for name in ("000000000009.jpg", "000000000025.jpg"):
        _image(coco / "images" / "train" / name)
    for name in ("000000000139.jpg", "000000000285.jpg"):
        _image(coco / "images" / "val" / name)
    (coco / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "nc": 2,
                                                    "names": {0: "person", 1: "bicycle"}}))
    for name in ("bottle-detection_f00000.jpg", "street_f00030.png"):
        _image(root / "distill" / "images" / "train" / name)
    (root / "distill" / "images" / "train" / "README.txt").write_text("not an image, not counted\n")
    return root


def test_prepare_data_merges_pools_and_holds_out_val(shared_tree, tmp_path):
    data_yaml = prepare_data(shared_tree, tmp_path / "out")
    text = data_yaml.read_text()
    assert text.startswith("#") and "coco-mini 2" in text and "distill 2" in text
    data = yaml.safe_load(text)
    out = tmp_path / "out"
    # Links to the pools (distill-extra is absent: skipped), so that nothing is copied
    assert data["train"] == [str(out / "coco-mini" / "images" / "train"), str(out / "distill" / "images" / "train")]
    assert data["val"] == str(out / "coco-mini" / "images" / "val")
    for split in (*data["train"], data["val"]):
        source = shared_tree / Path(split).relative_to(out)
        assert sorted(p.name for p in Path(split).iterdir()) == sorted(p.name for p in source.glob("*.*g"))
        assert all(p.resolve() == source / p.name for p in Path(split).iterdir())
        assert Path(split.replace("images", "labels")).resolve() == Path(str(source).replace("images", "labels"))
    assert (data["nc"], data["names"]) == (2, {0: "person", 1: "bicycle"})
    checked = check_det_dataset(str(data_yaml))  # ultralytics accepts it as it is
    assert checked["nc"] == 2 and len(checked["train"]) == 2
    # Ultralytics finds the labels through the links and writes its label caches beside them, not into the pools.
    for split, n_images in ((checked["train"], 4), (checked["val"], 2)):
        dataset = YOLODataset(img_path=split, imgsz=32, augment=False, data=checked, hyp=DEFAULT_CFG)
        assert len(dataset.labels) == n_images and all(len(x["cls"]) == 1 for x in dataset.labels)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.cache")) == [
        "coco-mini/labels/train.cache", "coco-mini/labels/val.cache"]
    assert not list(shared_tree.rglob("*.cache"))
    assert prepare_data(shared_tree, out) == data_yaml  # a rerun replaces its links


@pytest.mark.parametrize("leak", ["000000000139.jpg", "aug_000000000285_flipped.png"])
def test_prepare_data_refuses_held_out_images(shared_tree, tmp_path, leak):
    _image(shared_tree / "distill-extra" / "images" / "train" / leak)
    with pytest.raises(ValueError, match="distill-extra shares 1 image"):
        prepare_data(shared_tree, tmp_path / "out")
    assert not (tmp_path / "out" / "data.yaml").exists()


def test_prepare_data_without_coco_mini(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="coco-mini"):
        prepare_data(tmp_path, tmp_path / "out")
    assert main(["prepare-data", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "coco-mini" in err[0]

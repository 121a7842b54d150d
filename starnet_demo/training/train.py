"""The train command: ultralytics' detection trainer, with a feature-distillation stage in front.

Stages (each one run of ultralytics' ``DetectionTrainer``, so AMP, EMA, resuming, ``time=`` budgets and multi-GPU
DDP with ``device=0,1,2,3`` all come from ultralytics):

* ``distill``: the student takes the teacher's SPPF, neck and head (frozen) and learns to reproduce the teacher's
  P3/P4/P5 maps; no labels are needed. ``freeze_bn`` keeps BatchNorm statistics fixed: use it to continue from
  trained weights with small batches. ``reestimate_bn`` first resets the student's statistics to its eval-mode
  inputs (``distill.reestimate_bn``), for weights whose eval mode has drifted from their train mode, and undoes that
  when it does not lower the eval-mode feature loss on the calibration images (the recipe records which).
  ``output_kd`` adds the divergence of the frozen head's outputs from the teacher's, with that weight
  (``distill.output_loss``); it needs the teacher's 80 classes.
* ``finetune``: end-to-end detection training on labels (ground truth plus pseudo-labels). Folded BatchNorms taken
  from the teacher are recalibrated first, so that train mode starts from the eval-mode function.

``resume`` continues an interrupted run from its ``last.pt`` as the same stage, with the recipe so far
(``RUN_NOTES``), so that training can stop and go on across sessions.

Each stage ends by writing ``<run>/export/<variant>.safetensors`` + ``.json`` with the recipe so far, so the next
stage, or a later session, continues from it.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.patches import torch_load

from ..models.yolo import OWN_TEACHER_START, build_model, init_from_teacher
from ..weights.files import load_weights, save_weights
from .distill import DistillStudent, eval_feature_loss, load_teacher, recalibrate_bn, reestimate_bn_if_better

STAGES = ("distill", "finetune")
# Beside each run's weights/: what a resumed run cannot read from ultralytics' checkpoint (the recipe so far, the
# teacher, what was done to the BatchNorms), so that its exported weights still carry their whole history.
RUN_NOTES = "starnet_run.json"
# The teacher's SPPF, neck and head sit at layers 7-20 of our YAMLs; the distill stage trains only layers 0-6, unless
# it trains the head too.
FROZEN_IN_DISTILL = list(range(OWN_TEACHER_START, 21))
# A run for a time budget starts with this many epochs, cut to what fits once the first iterations are timed.
BUDGET_EPOCHS = 1000

STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Regression from a random backbone: a larger AdamW step and no detection-loss warm-up bias.
    "distill": dict(optimizer="AdamW", lr0=2e-3, lrf=0.05, cos_lr=True, warmup_epochs=1, warmup_bias_lr=0.0,
                    weight_decay=5e-4, val=False, close_mosaic=0),
    # Fine-tuning a working detector: ultralytics' "auto" optimizer picks a small AdamW step for short runs.
    "finetune": dict(optimizer="auto", warmup_epochs=1, warmup_bias_lr=0.0, close_mosaic=2),
}


class StarNetTrainer(DetectionTrainer):
    """Ultralytics' DetectionTrainer, resuming a distill run as one, training on every CPU core, and reading its
    results CSV without polars (absent on lean GPU images)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.device.type == "cpu":
            # Ultralytics keeps one core free for data loading (torch threads = cores - 1), then loads data in the
            # training process on CPU (workers=0): on a 2-core machine, half the CPU sat idle.
            torch.set_num_threads(os.cpu_count() or 1)

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> DetectionModel:
        """On resume, ultralytics rebuilds a plain DetectionModel, which would carry on with the detection loss."""
        if not isinstance(weights, DistillStudent):
            return super().get_model(cfg, weights, verbose)
        model = self.set_model_names_for_load(DistillStudent(cfg, nc=self.data["nc"], ch=self.data["channels"],
                                                             verbose=verbose and RANK == -1))
        model.load(weights)
        for setting in ("teacher_path", "freeze_bn", "output_kd", "train_head"):
            setattr(model, setting, getattr(weights, setting))
        return model

    def read_results_csv(self) -> dict[str, list]:
        return _read_results(self.csv)


def _read_results(path: Path) -> dict[str, list[float]]:
    """Ultralytics' results.csv as columns (empty when there is none yet)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return {k.strip(): [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


class EpochBudget:
    """Sizes a run to the whole epochs that fit ``seconds`` of training, from the pace of its first iterations.

    Ultralytics' ``time=`` re-derives the epoch count after every epoch and rebuilds the cosine schedule each time, so
    the learning rate jumps about. This decides once, during the first epoch (after ``skip`` iterations of start-up,
    over ``measure`` more, or at its end if it is shorter), and builds the schedule once: a run for a time budget is
    the same run as one for that many epochs. The warm-up keeps the length it had for the initial epoch count. Should
    the pace fall later (a shared machine), the epochs are cut to what still fits and the schedule rebuilt from there.
    """

    def __init__(self, seconds: float, skip: int = 3, measure: int = 10) -> None:
        self.seconds, self.skip, self.measure = seconds, skip, measure
        self.marks: list[float] = []
        self.decided: dict[str, float] = {}
        self.first_epoch_end = 0.0

    def on_train_batch_end(self, trainer: DetectionTrainer) -> None:
        if not self.decided and trainer.epoch == trainer.start_epoch:
            self.marks.append(time.time())
            if len(self.marks) >= self.skip + self.measure:
                self.decide(trainer)

    def on_train_epoch_end(self, trainer: DetectionTrainer) -> None:
        if not self.decided:
            self.decide(trainer)
        done = trainer.epoch + 1 - trainer.start_epoch
        now = time.time()
        if done == 1:
            self.first_epoch_end = now
            return
        # Only if the pace has fallen since (a machine shared with other work): the epochs left that still fit. The
        # pace is that of the epochs after the first, whose start-up (caching, workers, kernel choice) happens once.
        elapsed = now - trainer.train_time_start
        per_epoch = (now - self.first_epoch_end) / (done - 1)
        if elapsed + (trainer.epochs - trainer.epoch - 1) * per_epoch > self.seconds * 1.02:
            epochs = trainer.epoch + 1 + max(0, math.floor((self.seconds - elapsed) / per_epoch))
            self._set_epochs(trainer, epochs)
            self.decided.setdefault("resized", []).append({"after_epoch": trainer.epoch + 1, "epochs": epochs})
            LOGGER.info(f"time budget: {per_epoch:.1f} s per epoch so far -> {epochs} epochs")

    @staticmethod
    def _set_epochs(trainer: DetectionTrainer, epochs: int) -> None:
        trainer.epochs = trainer.args.epochs = epochs
        trainer._setup_scheduler()
        # Where the loop's step at the start of this epoch would have left a schedule of that length, rates included.
        trainer.scheduler.last_epoch = trainer.epoch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            trainer.scheduler.step()

    def decide(self, trainer: DetectionTrainer) -> None:
        now, nb = time.time(), len(trainer.train_loader)
        marks = self.marks[self.skip:] if len(self.marks) > self.skip + 1 else self.marks
        if len(marks) > 1:
            per_iteration = (marks[-1] - marks[0]) / (len(marks) - 1)
        else:
            per_iteration = (now - trainer.train_time_start) / max(1, len(self.marks))
        epoch_s = nb * per_iteration
        first_ends = now + (nb - len(self.marks)) * per_iteration
        left = self.seconds - (first_ends - trainer.train_time_start)
        epochs = 1 + max(0, math.floor(left / (epoch_s * 1.05)))  # 5 % for the per-epoch saving and logging
        self._set_epochs(trainer, epochs)
        self.decided = {"seconds": self.seconds, "epochs": epochs, "iterations_per_epoch": nb,
                        "seconds_per_iteration": round(per_iteration, 4),
                        "images_per_second": round(trainer.batch_size / per_iteration, 1)}
        LOGGER.info(f"time budget {self.seconds:.0f} s: {per_iteration:.3f} s per iteration, {nb} per epoch -> "
                    f"{epochs} epochs")


def _write_run_notes(notes: dict, trainer: DetectionTrainer) -> None:
    """Save what a resume needs beside the run's weights (a module-level function, so DDP workers import it)."""
    if RANK in {-1, 0}:
        (Path(trainer.save_dir) / RUN_NOTES).write_text(json.dumps(notes))


def _outcome(trainer: DetectionTrainer) -> tuple[int, dict[str, float]]:
    """Epochs trained and the last validation metrics. A multi-GPU launcher only started the workers, so it has
    neither in memory and reads them from the run's results CSV."""
    if trainer.ddp:
        results = _read_results(trainer.csv)
        if not results:
            raise RuntimeError(f"the multi-GPU workers left no results in {trainer.csv}; see their log above")
        epochs = int(results["epoch"][-1])
        metrics = {k: v[-1] for k, v in results.items() if k.startswith(("metrics/", "val/"))}
    else:
        epochs, metrics = trainer.epoch + 1, trainer.metrics or {}
    return epochs, {k: round(float(v), 5) for k, v in metrics.items()}


def _calibration_batches(data: dict, imgsz: int, n_images: int = 64, batch: int = 16):
    """Letterboxed training images, unaugmented, as float batches for BatchNorm statistics."""
    dataset = YOLODataset(img_path=data["train"], imgsz=imgsz, augment=False, hyp=DEFAULT_CFG, data=data,
                          batch_size=batch, rect=False, prefix="calibration: ")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=YOLODataset.collate_fn)
    for b in itertools.islice(loader, max(1, n_images // batch)):
        yield b["img"].float() / 255


def _earlier_seconds(results_csv: Path) -> float:
    """Training seconds of the processes before a resume: ultralytics' ``time`` column restarts at each one."""
    with contextlib.suppress(ValueError):  # a malformed file costs the figure, not the run
        times = _read_results(results_csv).get("time", [])
        return sum(a for a, b in zip(times, times[1:], strict=False) if b < a) + (times[-1] if times else 0.0)
    return 0.0


def _describe_data(data: dict) -> dict[str, list[str] | str]:
    """Folders of a dataset relative to its pools (``distill/images/train``), for the recipe."""
    def short(path: str) -> str:
        return "/".join(Path(path).parts[-3:])

    train = data["train"] if isinstance(data["train"], list) else [data["train"]]
    return {"train": [short(p) for p in train], "val": short(data["val"])}


def checkpoint_ema(path: str | Path) -> DetectionModel:
    """The EMA model an ultralytics training checkpoint holds, which is what a run exports."""
    ckpt = torch_load(path, map_location="cpu")
    return ckpt.get("ema") or ckpt["model"]  # strip_optimizer moves the EMA to "model"


def initial_model(variant: str, stage: str, data: dict, *, weights: str | None, teacher: str | None,
                  pretrained: bool | str, imgsz: int, freeze_bn: bool = False, reestimate: bool = False,
                  output_kd: float = 0.0, train_head: bool = False) -> tuple[DetectionModel, list[dict], list[str]]:
    """The model a stage starts from, the recipe that produced it, and what was done to its BatchNorms."""
    recipe: list[dict] = []
    batchnorm: list[str] = []
    if weights:
        loaded, config = load_weights(weights)
        if config["variant"] != variant:
            raise ValueError(f"{weights} holds variant {config['variant']}, not {variant}")
        recipe = list(config.get("recipe", []))
        state = loaded.state_dict()
    cls = DistillStudent if stage == "distill" else DetectionModel
    model = build_model(variant, nc=data["nc"], names=data["names"], pretrained=False if weights else pretrained,
                        cls=cls)
    if weights:
        model.load_state_dict(state)
    # A distill stage restarts from the teacher's SPPF, neck and head, unless an earlier step trained them.
    head_trained = any(step.get("train_head") for step in recipe)
    if teacher and (not weights or (stage == "distill" and not head_trained)):
        init_from_teacher(model, load_file(teacher))
    if stage == "distill":
        if not teacher:
            raise ValueError("the distill stage needs --teacher (a YOLOv8n state dict in safetensors)")
        model.teacher_path = str(Path(teacher).resolve())
        model.freeze_bn, model.output_kd, model.train_head = freeze_bn, output_kd, train_head
        if output_kd and (theirs := load_teacher(model.teacher_path).model[-1].nc) != model.model[-1].nc:
            raise ValueError(f"output_kd needs the teacher's classes: the data has {model.model[-1].nc}, the teacher "
                             f"{theirs}")
        if reestimate:
            batches = list(_calibration_batches(data, imgsz))
            before, after, kept = reestimate_bn_if_better(model, batches, model.model[: FROZEN_IN_DISTILL[0]],
                                                          eval_feature_loss)
            change = f"eval-mode feature loss {before:.3g} -> {after:.3g} on {sum(len(b) for b in batches)} images"
            batchnorm.append(f"re-estimated in eval mode ({change})" if kept else f"re-estimation undone ({change})")
            LOGGER.info(f"BatchNorm {batchnorm[-1]}")
        if freeze_bn:
            batchnorm.append("frozen (eval mode)")
    else:
        recalibrate_bn(model, _calibration_batches(data, imgsz))
    return model, recipe, batchnorm


def train(variant: str, data: str, *, stage: str = "finetune", weights: str | None = None,
          teacher: str | None = None, pretrained: bool | str = False, resume: str | None = None,
          project: str = "runs/starnet", name: str | None = None, freeze_bn: bool = False,
          reestimate_bn: bool = False, output_kd: float = 0.0, train_head: bool = False,
          budget_s: float | None = None, **overrides: Any) -> Path:
    """Run one stage; returns the config path of the weights it wrote (``<run>/export/<variant>.json``).

    ``overrides`` are ultralytics train arguments (``epochs``, ``imgsz``, ``batch``, ``device``, ``time``, ``amp``,
    ``workers``, ``lr0``…), applied over the stage's defaults. ``budget_s`` trains the whole epochs that fit that
    many seconds, sized from the first iterations' pace (``EpochBudget``), instead of ``epochs`` or ``time``.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if (freeze_bn or reestimate_bn or output_kd or train_head) and stage != "distill":
        raise ValueError("freeze_bn, reestimate_bn, output_kd and train_head apply to the distill stage only")
    if train_head and not output_kd:
        raise ValueError("train_head needs output_kd: the head learns from the teacher's outputs")
    if reestimate_bn and not weights:
        raise ValueError("reestimate_bn needs trained weights to start from")
    budget = EpochBudget(budget_s) if budget_s else None
    if budget:
        if resume or "time" in overrides or "," in str(overrides.get("device", "")):
            raise ValueError("a time budget (budget_s) starts a run on one device, without time= or resume")
        if STAGE_DEFAULTS[stage].get("optimizer", "auto") == overrides.get("optimizer", "auto") == "auto":
            raise ValueError("a time budget needs an explicit optimizer: 'auto' picks one from the epoch count")
        overrides["epochs"] = BUDGET_EPOCHS
    started = time.time()
    if resume:
        ckpt = torch_load(resume, map_location="cpu")
        stage = "distill" if isinstance(ckpt.get("ema"), DistillStudent) else "finetune"
        run_dir = Path(resume).resolve().parent.parent  # <run>/weights/last.pt
        notes = json.loads((run_dir / RUN_NOTES).read_text()) if (run_dir / RUN_NOTES).is_file() else {}
        recipe_base, batchnorm, teacher = notes.get("recipe", []), notes.get("batchnorm", []), notes.get("teacher")
        earlier = _earlier_seconds(run_dir / "results.csv")
        trainer = StarNetTrainer(overrides={"resume": str(resume), **{k: v for k, v in overrides.items()
                                                                        if k in ("device", "workers", "batch")}})
        data_yaml = ckpt["train_args"]["data"]
    else:
        data_yaml = str(Path(data).resolve())
        data_dict = check_det_dataset(data_yaml)
        imgsz = int(overrides.get("imgsz", 640))
        model, recipe_base, batchnorm = initial_model(variant, stage, data_dict, weights=weights, teacher=teacher,
                                                      pretrained=pretrained, imgsz=imgsz, freeze_bn=freeze_bn,
                                                      reestimate=reestimate_bn, output_kd=output_kd,
                                                      train_head=train_head)
        args = {**STAGE_DEFAULTS[stage], "plots": False, **overrides, "data": data_yaml,
                "project": str(Path(project).resolve()), "name": name or f"{variant}-{stage}",
                "model": str(model.yaml["yaml_file"])}
        if stage == "distill" and not train_head:
            args["freeze"] = FROZEN_IN_DISTILL
        trainer = StarNetTrainer(overrides=args)
        trainer.model = model
        earlier = 0.0
        notes = {"recipe": recipe_base, "batchnorm": batchnorm, "teacher": teacher and str(Path(teacher).resolve())}
        # Written when training starts, by the process that trains: a multi-GPU launch empties the run folder first.
        trainer.add_callback("on_train_start", functools.partial(_write_run_notes, notes))
    if budget:
        trainer.add_callback("on_train_batch_end", budget.on_train_batch_end)
        trainer.add_callback("on_train_epoch_end", budget.on_train_epoch_end)
    trainer.train()

    best = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    ema = checkpoint_ema(best)
    final = build_model(variant, nc=len(ema.names), names=ema.names)
    final.load_state_dict({k: v.float() for k, v in ema.state_dict().items()})
    epochs, metrics = _outcome(trainer)
    step = {
        "stage": stage,
        "data": _describe_data(check_det_dataset(data_yaml)),
        "teacher": Path(teacher).name if teacher else None,
        "epochs": epochs,
        "imgsz": trainer.args.imgsz,
        "batch": trainer.args.batch,
        "optimizer": trainer.args.optimizer,
        "lr0": trainer.args.lr0,
        "device": str(trainer.device),
        "seconds": round(earlier + time.time() - started, 1),
        "val_metrics": metrics,
    }
    if budget:
        step["budget"] = budget.decided
    if getattr(ema, "output_kd", 0.0):
        step["output_kd"] = ema.output_kd
    if getattr(ema, "train_head", False):
        step["train_head"] = True
    if batchnorm:
        step["batchnorm"] = ", then ".join(batchnorm)
    # The config's imgsz is the size to run at (640, as evaluated); the training size is in the recipe step.
    return save_weights(final, trainer.save_dir / "export", {"recipe": [*recipe_base, step]})

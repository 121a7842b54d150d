"""The command line: ``python -m starnet_demo <command> …`` (or ``starnet-demo``); ``--help`` lists the commands.

Exit codes: 0 done; 2 a bad argument (one line on stderr); 1 a failure: one line when it is the user's to fix (a
missing file, an unreachable Hub), the traceback too when it is a fault of ours; 130 interrupted. This module
imports no torch, ultralytics or gradio: each command imports what it needs when it runs, so ``--help`` is instant.
A Hub token comes from ``$HF_TOKEN`` or the saved login (``hf auth login``), never from the command line, where it
would end up in the shell's history and the process list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("starnet_demo")


class UsageError(Exception):
    """Arguments that parse but do not fit together (``train`` without ``--data``): exit 2, like argparse's."""


class CommandFailed(Exception):
    """A command that ran and failed for a reason the user can act on (every benchmark failed): exit 1, one line."""


# ---------------------------------------------------------------- argument types (parse time; they may import)
def _variants(text: str) -> list[str]:
    from .models.backbone import VARIANTS
    from .models.yolo import BASELINE

    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS and v != BASELINE]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(bad) or repr(text)}; choose from "
                                         f"{', '.join([*VARIANTS, BASELINE])}")
    return names


def _one(parse, kind: str):
    """A parser for exactly one item of what ``parse`` reads as a comma list."""
    def one(text: str) -> str:
        names = parse(text)
        if len(names) != 1:
            raise argparse.ArgumentTypeError(f"give one {kind}, got {text!r}")
        return names[0]

    one.__name__ = kind  # argparse names the type in its own messages
    return one


def _stages(text: str) -> str:
    stages = [x.strip() for x in text.split(",")]
    bad = [x for x in stages if x not in ("distill", "finetune")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(bad)}; use distill and/or finetune")
    return ",".join(stages)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _imgsz(text: str) -> int:
    """An image size a model runs at (a multiple of the stride; ``check_imgsz`` rounds up as ultralytics does)."""
    from .inference.preprocess import check_imgsz

    try:
        return check_imgsz(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if text.strip().lstrip("-").isdigit()
                                         else f"image size must be a whole number, got {text!r}") from None


def _number(kind: type, lo: float, hi: float | None = None):
    """An argparse type: a ``kind`` (int or float) from ``lo`` to ``hi`` (None: no upper bound)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}"
                                             ) from None
        if not (lo <= value and (hi is None or value <= hi)):  # NaN fails both
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {text}" if hi is None
                                             else f"must be from {lo} to {hi}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_count, _fraction, _seconds = _number(int, 1), _number(float, 0.0, 1.0), _number(float, 0.0)


def _runtimes(text: str) -> list[str]:
    from .inference.runtimes import RUNTIMES

    names = _csv(text)
    bad = [r for r in names if r not in (*RUNTIMES, "auto")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown runtime(s) {', '.join(bad) or repr(text)}; choose from auto, "
                                         f"{', '.join(RUNTIMES)}")
    return names


_variant = _one(_variants, "variant")
_runtime = _one(_runtimes, "runtime")




def _mix(text: str) -> dict[str, float]:
    from .tools.loadtest import parse_mix

    try:
        return parse_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _camera_size(text: str) -> tuple[int, int]:
    w, sep, h = text.partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise argparse.ArgumentTypeError(f"--camera-size takes WIDTHxHEIGHT, e.g. 640x480, got {text!r}")
    return int(w), int(h)


class _NoToken(argparse.Action):
    """``--token`` is refused with the way that works: a token typed on the command line is kept by the shell."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--token is not taken: a token on the command line stays in the shell's history; set HF_TOKEN "
                     "or run `hf auth login`")


# ---------------------------------------------------------------- commands (each imports what it needs)
def cmd_info(args: argparse.Namespace) -> None:
    from .models.backbone import VARIANTS
    from .models.yolo import BASELINE, summary

    print(f"{'variant':<8} {'backbone params':>16} {'detector params':>16} {'GFLOPs@' + str(args.imgsz):>12}")
    for v in args.variants or [*VARIANTS, BASELINE]:
        s = summary(v, args.imgsz)
        print(f"{v:<8} {s['backbone_params'] / 1e6:>15.2f}M {s['params'] / 1e6:>15.2f}M {s['gflops']:>12.2f}")


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from .training.data import prepare_data

    print(prepare_data(args.root, args.out))


def cmd_bundle(args: argparse.Namespace) -> None:
    from .training.bundle import MIB, build_bundle

    manifest = build_bundle(args.shared, args.out, wheels=args.wheels, long_side=args.long_side,
                            quality=args.quality, val_quality=args.val_quality,
                            max_bytes=round(args.max_mib * MIB) if args.max_mib else None)
    print(f"{args.out}: {manifest['bytes'] / MIB:.1f} MiB (room {manifest['room_bytes'] / MIB:.1f} MiB), "
          f"{manifest['images']['train_total']} training images, {manifest['images']['val_held_out']} held-out; "
          f"run it with: bash {args.out}/run.sh")


def cmd_train(args: argparse.Namespace) -> None:
    from .training.train import train

    stages = args.stage.split(",")
    per_stage = {"time_min": _per_stage(args.time_min, stages, float), "imgsz": _per_stage(args.imgsz, stages, int)}
    common = {k: v for k, v in vars(args).items() if k in {"epochs", "batch", "device", "workers", "amp", "lr0",
                                                             "cache", "seed", "patience", "fraction"}
              and v is not None}
    for item in args.set or []:
        key, eq, value = item.partition("=")
        if not (key and eq):
            raise UsageError(f"--set takes KEY=VALUE (an ultralytics train argument), got {item!r}")
        common[key] = _literal(value)
    if not (args.data or args.resume):
        raise UsageError("train needs --data (a data YAML, e.g. from prepare-data), or --resume RUN/weights/last.pt")
    if args.resume and (len(stages) > 1 or len(args.variant) > 1):
        raise UsageError("--resume continues one run: give one --variant and one --stage")
    distill_only = {"freeze_bn": args.freeze_bn, "reestimate_bn": args.reestimate_bn, "output_kd": args.output_kd,
                    "train_head": args.train_head}
    if any(distill_only.values()) and "distill" not in stages:
        raise UsageError("--freeze-bn, --reestimate-bn, --output-kd and --train-head apply to the distill stage only")
    if args.train_head and not args.output_kd:
        raise UsageError("--train-head needs --output-kd: the head learns from the teacher's outputs")
    if args.reestimate_bn and not args.weights:
        raise UsageError("--reestimate-bn needs trained weights to start from (--weights)")
    for variant in args.variant:
        weights = _weights_for(args.weights, variant)
        for i, stage in enumerate(stages):
            overrides = dict(common)
            if per_stage["imgsz"]:
                overrides["imgsz"] = per_stage["imgsz"][i]
            if per_stage["time_min"]:
                overrides["time"] = per_stage["time_min"][i] / 60
            name = f"{args.name}-{variant}-{stage}" if args.name else None
            weights = str(train(variant, args.data, stage=stage, weights=weights, teacher=args.teacher,
                                pretrained=args.pretrained or False, resume=args.resume, project=args.project,
                                name=name, **(distill_only if stage == "distill" else {}), **overrides))
            print(weights, flush=True)


def _per_stage(text: str | None, stages: list[str], kind: type) -> list:
    """``"2,1"`` → one value per stage; a single value applies to every stage."""
    if text is None:
        return []
    try:
        values = [kind(x) for x in str(text).split(",")]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values *= len(stages)
    if len(values) != len(stages):
        raise UsageError(f"got {len(values)} values for {len(stages)} stages: {text}")
    return values


def _weights_for(weights: str | None, variant: str) -> str | None:
    """``--weights`` may be a file or a folder holding ``<variant>.json``."""
    if weights and Path(weights).is_dir():
        return str(Path(weights) / f"{variant}.json")
    return weights


def _literal(value: str):
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def cmd_eval(args: argparse.Namespace) -> None:
    from .training.evaluate import evaluate, write_json
    from .weights.files import load_weights
    from .weights.hub import resolve_weights

    path = _weights_for(args.weights, args.variant) if args.weights else \
        resolve_weights(args.variant, repo_id=args.repo_id, revision=args.revision)
    model, _ = load_weights(path)
    tensors = Path(path).with_suffix(".safetensors")
    against = _weights_for(args.against, args.variant)
    result = evaluate(model, args.data, imgsz=args.imgsz, batch=args.batch, device=args.device,
                      weights_file=tensors, bootstrap=args.bootstrap,
                      against=load_weights(against)[0] if against else None,
                      against_file=Path(against).with_suffix(".safetensors") if against else None)
    write_json(result, args.out)
    if args.record:
        from .weights.files import record_metrics

        keys = ("map50", "map50_se", "map50_95", "map50_95_se", "precision", "recall", "images", "imgsz", "batch",
                "device")
        record_metrics(path, {"data": args.record, **{k: result[k] for k in keys if k in result},
                              **_teacher_reference(args)})
        print(f"recorded in {Path(path).with_suffix('.json')}")


def _teacher_reference(args: argparse.Namespace) -> dict[str, float]:
    return {k: v for k, v in (("teacher_map50", args.teacher_map50), ("teacher_map50_95", args.teacher_map50_95))
            if v is not None}


def cmd_grow(args: argparse.Namespace) -> None:
    from .training.grow import check_growth, grow
    from .weights.files import load_weights, save_weights, sha256_file
    from .weights.hub import resolve_weights

    try:
        check_growth(args.source, args.target)  # refuse before loading anything
    except ValueError as e:
        raise UsageError(str(e)) from None
    path = _weights_for(args.weights, args.source) if args.weights else resolve_weights(args.source)
    model, config = load_weights(path)
    if config["variant"] != args.source:
        raise UsageError(f"{path} holds variant {config['variant']}, not {args.source}")
    step = {"stage": "grow", "from": args.source, "to": args.target, "noise": args.noise, "seed": args.seed,
            "source_sha256": sha256_file(Path(path).with_suffix(".safetensors")),
            "method": "Net2Net: function-preserving widening (copied channels, divided readers) and deepening "
                      "(new blocks with a zero dwconv2)"}
    out = save_weights(grow(model, args.target, noise=args.noise, seed=args.seed), args.out,
                       meta={"recipe": [*config.get("recipe", []), step]})
    print(out)


def cmd_soup(args: argparse.Namespace) -> None:
    from .training.soup import soup
    from .weights.files import save_weights

    missing = [m for m in args.members if not Path(m).is_file()]
    if missing:
        raise FileNotFoundError(f"soup member not found: {missing[0]}")
    print(save_weights(soup(args.members), args.out, {"soup_of": [str(m) for m in args.members]}))


def cmd_reference(args: argparse.Namespace) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models.yolo import BASELINE, build_model
    from .weights.files import save_weights, sha256_file

    if not Path(args.state_dict).is_file():
        raise FileNotFoundError(f"state dict not found: {args.state_dict}")
    try:
        state = load_file(args.state_dict)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{args.state_dict} is not a readable safetensors file ({e})") from None
    model = build_model(BASELINE)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{args.state_dict} is not an 80-class YOLOv8n state dict: {str(e).splitlines()[0]}") from None
    step = {"stage": "reference", "source": Path(args.state_dict).name,
            "source_sha256": sha256_file(args.state_dict), "note": args.note}
    print(save_weights(model.eval(), args.out, meta={"recipe": [step], "license": "AGPL-3.0"}))


def cmd_publish(args: argparse.Namespace) -> None:
    from .tools.publish import PublishError, build_upload_folder, publish
    from .weights.files import available_variants
    from .weights.hub import hub_repo

    repo_id = args.repo_id or hub_repo()
    variants = args.variant or available_variants(args.weights_dir)
    if args.dry_run:
        import tempfile

        folder = build_upload_folder(variants, args.weights_dir, args.out or tempfile.mkdtemp(prefix="publish-"),
                                     repo_id)
        for f in sorted(folder.iterdir()):
            print(f"{f}  {f.stat().st_size} bytes")
        return
    try:
        commit = publish(repo_id, variants, args.weights_dir, tag=args.tag, commit_message=args.message,
                         private=args.private)
    except PublishError as e:
        raise CommandFailed(str(e)) from None
    print(f"published {', '.join(variants)} to {repo_id}: {commit}" + (f" (tag {args.tag})" if args.tag else ""))


def cmd_deploy_space(args: argparse.Namespace) -> None:
    from .tools.space import DeployError, deploy, space_files

    if args.dry_run:
        for path_in_repo, size in space_files().items():
            print(f"{path_in_repo}  {size} bytes")
        return
    try:
        url = deploy(args.repo_id, private=args.private, commit_message=args.message, cpu_torch=args.cpu_torch)
    except DeployError as e:
        raise CommandFailed(str(e)) from None
    print(f"deployed to {url}")


def cmd_detect(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .inference.runtimes import unavailable_reason
    from .inference.settings import check_settings
    from .tools.detect import run

    try:
        settings = check_settings(args.model, args.device, args.conf, args.iou, args.imgsz)
    except InputError as e:
        raise UsageError(str(e)) from None
    reason = None if args.runtime == "auto" else unavailable_reason(args.runtime, settings.device)
    if reason:
        raise UsageError(f"runtime {args.runtime} cannot run on {settings.device}: {reason}")
    try:
        report = run(args.sources, settings, args.runtime, classes=args.classes, out=args.out)
    except InputError as e:  # a setting the model refuses (an unknown class name); unreadable files are skipped
        raise UsageError(str(e)) from None
    print(report.summary())
    return 1 if report.failed or not report.done else 0


def cmd_bench(args: argparse.Namespace) -> None:
    from .models.backbone import MAIN_VARIANTS
    from .tools.bench import bench, default_video, to_markdown, write

    video = None if args.video == "none" else (args.video or default_video())
    for label, path in (("video", video), ("image", args.image), ("data YAML", args.accuracy)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{label} not found: {path}")
    records = bench(args.variants or list(MAIN_VARIANTS), args.runtimes, device=args.device, imgsz=args.imgsz,
                    runs=args.runs, warmup=args.warmup, image=args.image, video=video, video_frames=args.video_frames,
                    precision_choice=args.precisions, rewrites=args.rewrites, accuracy=args.accuracy, busy=args.busy,
                    threads=args.threads, log=lambda line: print(line, file=sys.stderr, flush=True))
    json_path, md_path = write(records, args.out or f"runs/bench/bench-{args.device.replace(':', '')}.json")
    print(to_markdown(records))
    print(f"wrote {json_path} and {md_path}")
    if all("error" in r for r in records):
        raise CommandFailed("every combination failed")


def cmd_app_fps(args: argparse.Namespace) -> None:
    from .tools.appfps import run, split_cores, to_markdown, write

    if args.split_cores:
        try:
            split_cores()
        except ValueError as e:
            raise UsageError(str(e)) from None
    report = run(args.variants, args.runtime, args.imgsz, args.seconds, args.camera_fps, args.camera_size,
                 url=args.url, weights_dir=args.weights_dir, screenshots=args.screenshots, server_log=args.server_log,
                 split=args.split_cores, handler_seconds=args.handler_seconds, trace=args.trace,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    print(to_markdown(report))
    print(f"wrote {write(report, args.out)}")


def cmd_loadtest(args: argparse.Namespace) -> None:
    from .tools.loadtest import parse_mix, parse_shapes, run, serve_app, write

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        mix = parse_mix(args.mix)
        vary = {"sizes": args.sizes or [args.imgsz], "runtimes": args.runtimes or ["pytorch"],
                "video_shapes": parse_shapes(args.video_shapes)}
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.url:
        report = run(args.url, args.users, args.duration, args.warmup, args.pid, args.variants, args.devices or ["cpu"],
                     mix, args.imgsz, args.seed, log=log, **vary)
    else:
        from .inference import devices
        from .models.backbone import MAIN_VARIANTS
        from .weights.files import available_variants

        variants = args.variants or [v for v in available_variants() if v in MAIN_VARIANTS] or ["s1"]
        log("starting app.py on 127.0.0.1")
        with serve_app(log=args.server_log) as server:
            report = run(server.url, args.users, args.duration, args.warmup, server.pid, variants,
                         args.devices or devices.available(), mix, args.imgsz, args.seed, log=log, **vary)
            if not server.alive():
                raise CommandFailed(f"the app died during the load test (see {args.server_log or 'its output'})")
    path = write(report, args.out)
    rss = report.get("rss_mb", {})
    print(f"{report['done']} done, {report['failed']} failed in {report['duration_s']:.0f} s with {report['users']} "
          f"users ({report['throughput_rps']} req/s); latency p50 {report['latency_s']['p50']} s, p95 "
          f"{report['latency_s']['p95']} s; queue wait p95 {report['queue_wait_s']['p95']} s; RSS after warm-up "
          f"{rss.get('after_warmup')} MB, end {rss.get('end')} MB, peak {rss.get('peak')} MB; wrote {path}")
    if report["failed"] or report["load_requests"]["failed"]:
        raise CommandFailed(f"{report['failed']} request(s) failed: {'; '.join(report['errors'][:3])}")


# ---------------------------------------------------------------- the parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument gives one line on stderr (no usage block); subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_model_settings(s: argparse.ArgumentParser, *, default_runtime: str = "auto") -> None:
    """The app's settings, with the app's defaults."""
    s.add_argument("--model", type=_variant, default="s1", help="s1, s2, s3, s4 or yolov8n (default s1)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    s.add_argument("--runtime", type=_runtime, default=default_runtime,
                   help="auto (the fastest that passes the accuracy guard), pytorch, onnxruntime, openvino, …")
    s.add_argument("--conf", type=_fraction, default=0.25, help="confidence threshold (default 0.25)")
    s.add_argument("--iou", type=_fraction, default=0.45, help="NMS IoU threshold (default 0.45)")
    s.add_argument("--imgsz", type=_imgsz, default=640,
                   help="inference size, snapped to the app's sizes: 128 to 1280 in steps of 64 (default 640)")
    s.add_argument("--classes", type=_csv, help="only these class names, comma-separated (default: every class)")


def _add_use_commands(sub) -> None:
    s = sub.add_parser("info", help="parameters and GFLOPs of every variant")
    s.add_argument("--variants", type=_variants, help="comma-separated (default: every variant and yolov8n)")
    s.add_argument("--imgsz", type=_imgsz, default=640)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("detect", help="detect objects in images and videos (files, folders, globs): annotated "
                                      "copies plus every detection as CSV and JSON")
    s.add_argument("sources", nargs="+", metavar="SOURCE", help="image or video files, folders, or globs such as "
                                                               "'photos/**/*.jpg' (quoted)")
    _add_model_settings(s)
    s.add_argument("--out", default="runs/detect", help="output folder (default runs/detect)")
    s.set_defaults(func=cmd_detect)


def _add_training_commands(sub) -> None:
    s = sub.add_parser("prepare-data", help="merge coco-mini and the distill pools into one ultralytics dataset")
    s.add_argument("--root", default="../shared/datasets", help="folder holding coco-mini, distill, distill-extra")
    s.add_argument("--out", default="runs/data", help="where to write data.yaml")
    s.set_defaults(func=cmd_prepare_data)

    s = sub.add_parser("train", help="train (distill or finetune stage) with ultralytics' trainer")
    s.add_argument("--variant", type=_variants, required=True, help="one or more, comma-separated")
    s.add_argument("--data", help="data YAML (from prepare-data)")
    s.add_argument("--stage", default="finetune", type=_stages,
                   help="distill, finetune, or distill,finetune to chain them (each feeds the next)")
    s.add_argument("--weights", help="start from these weights (a .json/.safetensors, or a folder of them)")
    s.add_argument("--teacher", help="YOLOv8n state dict (safetensors) to distil from and take the neck/head of")
    s.add_argument("--pretrained", help="ImageNet backbone weights: 'timm' or a local file")
    s.add_argument("--resume", help="an ultralytics last.pt to resume")
    s.add_argument("--freeze-bn", action="store_true",
                   help="distill with BatchNorm statistics fixed (eval mode): for continuing with small batches")
    s.add_argument("--reestimate-bn", action="store_true",
                   help="before distilling, set the student's BatchNorm statistics to its eval-mode inputs "
                        "(kept only where that lowers the eval-mode feature loss)")
    s.add_argument("--output-kd", type=_number(float, 0.0), default=0.0, metavar="WEIGHT",
                   help="distill the frozen head's outputs too (class and box divergence from the teacher's), "
                        "with this weight beside the feature loss")
    s.add_argument("--train-head", action="store_true",
                   help="with --output-kd, train the SPPF, neck and head taken from the teacher too, so that they "
                        "adapt to StarNet's features")
    s.add_argument("--epochs", type=_count)
    s.add_argument("--time-min", help="time budget in minutes (overrides --epochs); one per stage, comma-separated")
    s.add_argument("--imgsz", help="training image size; one per stage, comma-separated")
    s.add_argument("--batch", type=_count)
    s.add_argument("--device", help="cpu, 0, or 0,1,2,3 for multi-GPU DDP")
    s.add_argument("--workers", type=_number(int, 0))
    s.add_argument("--amp", type=lambda x: x.lower() in ("1", "true", "yes"), help="mixed precision (default on)")
    s.add_argument("--lr0", type=_number(float, 0.0))
    s.add_argument("--cache", choices=("ram", "disk"))
    s.add_argument("--seed", type=int)
    s.add_argument("--patience", type=_number(int, 0))
    s.add_argument("--fraction", type=_fraction)
    s.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="any other ultralytics train arguments (repeatable)")
    s.add_argument("--project", default="runs/starnet")
    s.add_argument("--name")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="mAP on a held-out split, as JSON")
    s.add_argument("--variant", required=True, type=_variant)
    s.add_argument("--data", required=True)
    s.add_argument("--weights", help="weights file or folder (default: the pinned Hub release, else weights/)")
    s.add_argument("--repo-id", help="Hub repo of the weights (default: $STARNET_HUB_REPO or the project's)")
    s.add_argument("--revision", help="Hub revision (default: $STARNET_HUB_REVISION or the pinned release)")
    s.add_argument("--imgsz", type=_imgsz, default=640)
    s.add_argument("--batch", type=_count, default=16)
    s.add_argument("--device", default="cpu")
    s.add_argument("--out")
    s.add_argument("--bootstrap", type=_number(int, 0), default=1000, metavar="N",
                   help="resample the images N times for the mAPs' standard errors (0: skip)")
    s.add_argument("--against", metavar="WEIGHTS",
                   help="other weights (file, or folder with the same variant) to compare with on the same images: "
                        "the mAP differences and their paired standard errors")
    s.add_argument("--record", metavar="SPLIT_NAME",
                   help="also store the figures in the weights' JSON config under this split name")
    s.add_argument("--teacher-map50", type=_fraction, help="reference mAP50 to record beside ours")
    s.add_argument("--teacher-map50-95", type=_fraction, help="reference mAP50-95 to record beside ours")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("grow", help="grow trained weights into a wider/deeper variant with the same function (Net2Net)")
    s.add_argument("--from", dest="source", required=True, type=_variant, help="e.g. s1")
    s.add_argument("--to", dest="target", required=True, type=_variant, help="e.g. s3 or s4")
    s.add_argument("--out", required=True, help="folder for <to>.safetensors + .json")
    s.add_argument("--weights", help="the source's weights file or folder (default: the pinned Hub release, else "
                                     "weights/)")
    s.add_argument("--noise", type=_number(float, 0.0), default=0.0,
                   help="Gaussian noise on the dense convs, as a fraction of each one's weight std, to break the "
                        "symmetry of copied channels (0: exactly the source's function)")
    s.add_argument("--seed", type=int, default=0, help="seed of the channel maps and the noise")
    s.set_defaults(func=cmd_grow)

    s = sub.add_parser("soup", help="average two or more weights or training checkpoints of one variant (model soup)")
    s.add_argument("members", nargs="+", help="weights configs (.json) or ultralytics training checkpoints (.pt)")
    s.add_argument("--out", required=True, help="folder for the soup's <variant>.safetensors + .json")
    s.set_defaults(func=cmd_soup)

    s = sub.add_parser("reference", help="wrap an ultralytics YOLOv8n state dict (safetensors) as the reference "
                                         "model's weights in the project's format")
    s.add_argument("--state-dict", required=True, help="e.g. ../shared/teachers/yolov8n-coco.safetensors")
    s.add_argument("--out", required=True, help="folder for yolov8n.safetensors + .json (e.g. weights)")
    s.add_argument("--note", default="COCO-trained YOLOv8n (ultralytics, AGPL-3.0); the teacher of the StarNets",
                   help="provenance, kept in the recipe")
    s.set_defaults(func=cmd_reference)

    s = sub.add_parser("bundle", help="a folder that, with the working tree, trains on a GPU machine with no network "
                                      "(docs/training.md)")
    s.add_argument("--shared", default="../shared", help="folder holding datasets/ (and teachers/)")
    s.add_argument("--out", default=".gpu/bundle", help="the bundle's folder (replaced)")
    s.add_argument("--wheels", help="folder of wheels to carry (default: pip-download those the GPU machine lacks)")
    s.add_argument("--long-side", type=int, default=320, help="training images' longer side, px")
    s.add_argument("--quality", type=int, default=50, help="training images' WebP quality")
    s.add_argument("--val-quality", type=int, default=80, help="held-out images' WebP quality")
    s.add_argument("--max-mib", type=float, help="the bundle's size (default: what the 64 MiB upload leaves beside "
                                                 "the working tree, less 1 MiB)")
    s.set_defaults(func=cmd_bundle)


def _add_hub_commands(sub) -> None:
    token = "The token: $HF_TOKEN or the saved login (hf auth login)."
    s = sub.add_parser("publish", help="upload weights, configs and a model card to a Hugging Face Hub repo",
                       description=token)
    s.add_argument("--repo-id", help="target repo (default: $STARNET_HUB_REPO or the project's)")
    s.add_argument("--variant", type=_variants, help="one or more, comma-separated (default: all in --weights-dir)")
    s.add_argument("--weights-dir", help="folder of <variant>.safetensors/.json (default: weights/)")
    s.add_argument("--tag", help="tag the commit as a release, e.g. the HUB_REVISION the code pins")
    s.add_argument("--message", help="commit message")
    s.add_argument("--token", nargs="?", action=_NoToken, help=argparse.SUPPRESS)
    s.add_argument("--private", action="store_true", help="create the repo private")
    s.add_argument("--dry-run", action="store_true", help="only build the upload folder in --out and list it")
    s.add_argument("--out", help="empty or new folder where --dry-run builds (default: a new temporary one)")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("deploy-space", help="create (or update) a Hugging Face Space running the app, in one commit",
                       description="Uploads app.py, the package, weights, examples and the app's requirements, with "
                                   "front matter for this Python and Gradio, and removes whatever else the Space "
                                   "held. " + token)
    s.add_argument("--repo-id", required=True, help="the Space, USER/NAME")
    s.add_argument("--private", action="store_true", help="create the Space private")
    s.add_argument("--message", help="commit message")
    s.add_argument("--cpu-torch", action="store_true",
                   help="make the Space install PyTorch's CPU wheels (smaller and faster to build, for CPU hardware)")
    s.add_argument("--token", nargs="?", action=_NoToken, help=argparse.SUPPRESS)
    s.add_argument("--dry-run", action="store_true", help="only list the files that would be uploaded")
    s.set_defaults(func=cmd_deploy_space)


def _add_measure_commands(sub) -> None:
    s = sub.add_parser("bench", help="latency of every variant x runtime (YOLOv8n baseline included), JSON + markdown")
    s.add_argument("--variants", type=_variants,
                   help="comma-separated (default s1..s4); yolov8n is always added; missing weights: timed untrained")
    s.add_argument("--runtimes", type=_runtimes, help="comma-separated from auto, pytorch, cudagraph, compile, "
                   "onnxruntime, openvino, ultralytics (default: ultralytics + every one available on the device)")
    s.add_argument("--device", default="cpu", help="cpu or cuda:N")
    s.add_argument("--imgsz", type=_imgsz, default=640)
    s.add_argument("--runs", type=_count, default=20)
    s.add_argument("--warmup", type=_number(int, 0), default=3)
    s.add_argument("--precisions", default="default",
                   help="'default' (each runtime's), 'all', or a list such as fp32,bf16,fp16,int8")
    s.add_argument("--threads", type=_count,
                   help="CPU threads of every runtime, ultralytics' predict included (default: every core)")
    s.add_argument("--rewrites", type=_csv, help="any of none, fold, fold+merge (default: each runtime's best)")
    s.add_argument("--image", help="image to time (default examples/bus.jpg or ultralytics' bus.jpg)")
    s.add_argument("--video", help="video for the end-to-end pipeline (default: first video in examples/; 'none')")
    s.add_argument("--video-frames", type=_count, default=150)
    s.add_argument("--accuracy", metavar="DATA_YAML", help="also mAP50-95 per runtime/precision vs PyTorch fp32")
    s.add_argument("--busy", type=_number(int, 0), default=0, metavar="N",
                   help="N busy-loop processes compete for the CPU while timing (a shared machine)")
    s.add_argument("--out", help="JSON path (markdown beside it); default runs/bench/bench-<device>.json")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("app-fps", help="the Webcam tab's FPS and lag against Chromium's fake camera, JSON")
    s.add_argument("--variants", type=_variants, default=["s1"])
    s.add_argument("--runtime", type=_runtime, default="auto",
                   help="the Runtime the page picks (auto, openvino, onnxruntime, …)")
    s.add_argument("--imgsz", type=lambda t: [_imgsz(x) for x in _csv(t)], help="image sizes, comma-separated (640)")
    s.add_argument("--seconds", type=_seconds, default=20, help="measured seconds per setting (after 3 s of settling)")
    s.add_argument("--camera-fps", type=_count, default=30, help="the fake camera's frame rate")
    s.add_argument("--camera-size", type=_camera_size, default="640x480")
    s.add_argument("--url", help="a running app (default: start app.py on 127.0.0.1)")
    s.add_argument("--weights-dir", help="STARNET_WEIGHTS_DIR for the started app")
    s.add_argument("--screenshots", help="folder for a screenshot per setting")
    s.add_argument("--server-log", help="where the started app's output goes (default: discarded)")
    s.add_argument("--split-cores", action="store_true",
                   help="the app (and the handler alone) on one half of the cores, Chromium on the other")
    s.add_argument("--handler-seconds", type=_number(float, 0.0), default=10,
                   help="seconds of the handler called alone on the app's cores, for handler_fps (0: skip)")
    s.add_argument("--trace", help="with --url: the server trace file the running app writes "
                                   "(STARNET_WEBCAM_TRACE), for the stage breakdown")
    s.add_argument("--out", default="runs/app-fps/app-fps.json")
    s.set_defaults(func=cmd_app_fps)

    s = sub.add_parser("loadtest", help="N concurrent gradio_client users against the app for a bounded time, JSON")
    s.add_argument("--url", help="a running app (default: start app.py on 127.0.0.1 and measure its memory too)")
    s.add_argument("--pid", type=_count, help="with --url: the server's process id, for the memory figures")
    s.add_argument("--users", type=_count, default=8)
    s.add_argument("--duration", type=_seconds, default=60, help="measured seconds (after the warm-up)")
    s.add_argument("--warmup", type=_seconds, default=10,
                   help="seconds of load before measuring (models loaded first)")
    s.add_argument("--variants", type=_variants, help="default: s1..s4 that have weights")
    s.add_argument("--devices", type=_csv, help="default: every device the app offers (cpu with --url)")
    s.add_argument("--mix", default="image=6,video=1,latency=1,star=1,webcam=1", help="request kinds and their weights")
    s.add_argument("--imgsz", type=_imgsz, default=320)
    s.add_argument("--sizes", type=lambda t: [_imgsz(v) for v in _csv(t)],
                   help="image sizes each request picks from at random, e.g. 160,320,480,640 (default: --imgsz)")
    s.add_argument("--runtimes", type=_runtimes, help="runtimes each request picks from, e.g. auto,pytorch "
                   "(default: pytorch)")
    s.add_argument("--video-shapes", default="320x240",
                   help="video frame sizes WIDTHxHEIGHT the short videos come in, e.g. 320x240,300x500,500x210")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--server-log", help="where the started app's output goes (default: discarded)")
    s.add_argument("--out", default="runs/loadtest/loadtest.json")
    s.set_defaults(func=cmd_loadtest)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m starnet_demo",
                description="YOLOv8 detectors with a StarNet backbone: detect, train, evaluate, benchmark, publish "
                            "weights and deploy the app as a Hugging Face Space.",
                epilog="Exit codes: 0 done, 1 failed, 2 bad arguments. Hub tokens: $HF_TOKEN or `hf auth login`.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_use_commands(sub)
    _add_training_commands(sub)
    _add_hub_commands(sub)
    _add_measure_commands(sub)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the user's or their machine's to fix, told in one line: bad input (``ValueError``, which
    ``errors.InputError`` is), files and network (``OSError``), weights that cannot be had, and ours above."""
    from .weights.files import WeightsError

    return ValueError, OSError, WeightsError, CommandFailed


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2), already printed: a code to return, as for the rest
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, _user_errors()):
            print(f"error: {e}", file=sys.stderr)
        else:
            log.exception("%s failed: a fault of ours; please report it with this traceback", args.command)
        return 1

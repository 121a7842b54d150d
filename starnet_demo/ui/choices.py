"""What the app offers: models (labelled with their recorded held-out accuracy), devices, runtimes and blocks."""

from __future__ import annotations

from ..inference import devices, int8
from ..inference.precision import precisions
from ..inference.runtimes import available_runtimes, resolve_runtime
from ..models.backbone import MAIN_VARIANTS, VARIANTS, get_variant
from ..models.yolo import BASELINE
from ..weights.files import WeightsError, read_config, weight_files

# A model under this share of the reference's held-out mAP50 is labelled as undertrained.
WEAK_SHARE = 0.25


def model_name(variant: str) -> str:
    """``StarNet-S1``, or ``YOLOv8n (reference)``: the COCO-trained YOLOv8n that taught the StarNets."""
    return "YOLOv8n (reference)" if variant == BASELINE else f"StarNet-{variant.upper()}"


def shipped_record(variant: str) -> dict:
    """The shipped weights' JSON record (labels and ``auto``'s verdict read it without asking the Hub); empty when
    there is none."""
    config = weight_files(variant)[1]
    try:
        return read_config(config) if config.is_file() else {}
    except WeightsError:
        return {}


def recorded_metrics(variant: str) -> dict:
    """The held-out figures recorded in the model's weights config (``eval --record``); empty when there are none."""
    return dict(shipped_record(variant).get("metrics") or {})


def variant_label(variant: str) -> str:
    """``StarNet-S1 · mAP50 0.39``: the held-out figure from the weights config, so that a user who picks a weak
    model knows it before its boxes disappoint; "no weights yet" when there are none."""
    if not weight_files(variant)[1].is_file():
        return f"{model_name(variant)} (no weights yet)"
    metrics = recorded_metrics(variant)
    map50, reference = metrics.get("map50"), metrics.get("teacher_map50")
    if map50 is None:
        return model_name(variant)
    weak = " (undertrained)" if reference and map50 < WEAK_SHARE * reference else ""
    return f"{model_name(variant)} · mAP50 {map50:.2f}{weak}"


def variant_choices(reference: bool = True) -> list[tuple[str, str]]:
    """S1…S4 always (a missing one says so when used), the tiny variants when their weights exist, and the YOLOv8n
    reference last."""
    have = {v for v in VARIANTS if weight_files(v)[1].is_file()}
    starnets = [(variant_label(v), v) for v in VARIANTS if v in MAIN_VARIANTS or v in have]
    return starnets + ([(variant_label(BASELINE), BASELINE)] if reference else [])


def device_choices() -> list[tuple[str, str]]:
    return [(devices.label(d), d) for d in devices.available()]


def runtime_choices() -> list[str]:
    """``auto`` (the fastest for the device) and every runtime some device here can run."""
    return ["auto", *dict.fromkeys(r for d in devices.available() for r in available_runtimes(d))]


def auto_info() -> str:
    """What ``auto`` means on this machine's CPU, per model where the models differ (int8 only where a model's
    weights passed the accuracy guard and int8 was faster on a CPU like this one)."""
    cpu, flags = resolve_runtime("auto", "cpu"), devices.cpu_info()["cpu_flags"]
    by_model = {v: precisions(cpu, "cpu", cpu == "openvino" and int8.leads(shipped_record(v), flags)
                              and int8.calibration_available())[0] for v in (*MAIN_VARIANTS, BASELINE)}
    common = max(set(by_model.values()), key=list(by_model.values()).count)
    odd = ", ".join(f"{model_name(v)} {p}" for v, p in by_model.items() if p != common)
    return (f"auto: {cpu} {common} on CPU{f' ({odd})' if odd else ''}, CUDA graphs on GPU. The fastest that passes "
            "the accuracy guard; exported on first use.")


def block_choices(variant: str) -> list[str]:
    """The star blocks of a StarNet (``stage.index``), from the variant table; none for YOLOv8n."""
    return [] if variant == BASELINE else get_variant(variant).block_keys


def default_block(variant: str) -> str | None:
    """The last block of the stride-16 stage: deep enough to be semantic, fine enough to see objects."""
    keys = block_choices(variant)
    return ([k for k in keys if k.startswith("2.")] or keys or [None])[-1]

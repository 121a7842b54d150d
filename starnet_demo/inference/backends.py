"""Backends: one letterboxed RGB ``uint8`` image in, YOLO's raw predictions ``(1, 4 + nc, anchors)`` out.

The rewritten model run by PyTorch (eager, a CUDA graph or compiled), ONNX Runtime or OpenVINO; the detector around
a backend letterboxes and runs NMS, so every runtime sees the same pixels and the same post-processing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from ultralytics.nn.tasks import DetectionModel

from ..models.rewrite import optimise
from ..models.yolo import variant_of
from . import exports
from .exports import as_shape
from .preprocess import Shape, blob
from .runtimes import EXPORT_FORMATS, Progress, default_rewrite, is_cuda, openvino_cpu_bf16


class Backend(Protocol):
    """Runs a letterboxed image; ``prepare`` is timed as preprocessing, ``__call__`` as inference. ``threads``: the
    intra-op threads it computes on (None: the runtime's own choice, unknown)."""

    precision: str
    threads: int | None

    def prepare(self, letterboxed: np.ndarray) -> Any: ...

    def __call__(self, x: Any) -> torch.Tensor: ...


class TorchBackend:
    """The rewritten model in PyTorch: eager, a captured CUDA graph (``cudagraph``) or ``torch.compile``.

    On CUDA it runs fp16 and channels-last by default. On CPU, channels-last is used too: oneDNN's 7×7 depthwise
    convolutions run much faster in NHWC (see the benchmark).
    """

    def __init__(self, model: DetectionModel, device: str, imgsz: int | Shape, precision: str, mode: str = "eager",
                 rewrite: str = "fold+merge", channels_last: bool = True):
        self.device, self.precision, self.mode, self.shape = torch.device(device), precision, mode, as_shape(imgsz)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
        net = optimise(model, rewrite).to(self.device, self.dtype).to(memory_format=self.memory_format)
        self.net = net
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None
        self._run = self._eager
        if mode == "compile":
            self._compiled = torch.compile(net, mode="reduce-overhead")
            self._run = self._compiled_call
        elif mode == "cudagraph":
            self._capture()
            self._run = self._replay
        elif mode != "eager":
            raise ValueError(f"unknown torch mode {mode!r}")

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def prepare(self, letterboxed: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(letterboxed).to(self.device, non_blocking=True)  # uint8 over the bus: 4× fewer bytes
        x = x.permute(2, 0, 1).unsqueeze(0).to(self.dtype).div_(255)
        return x.contiguous(memory_format=self.memory_format)

    @staticmethod
    def _first(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, (tuple, list)) else out

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        return self._first(self.net(x))

    def _compiled_call(self, x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self._first(self._compiled(x)).clone()

    @torch.inference_mode()
    def _capture(self) -> None:
        """Record one forward pass at the fixed input shape as a CUDA graph; replaying it skips ~300 launches."""
        self._static_in = torch.zeros(1, 3, *self.shape, device=self.device, dtype=self.dtype
                                      ).contiguous(memory_format=self.memory_format)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: cuDNN autotuning and the head's anchor cache happen outside the graph
                self._eager(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._eager(self._static_in)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(self._static_in.shape):
            raise ValueError(f"the CUDA graph was captured for {tuple(self._static_in.shape)}, got {tuple(x.shape)}")
        self._static_in.copy_(x)
        self._graph.replay()
        return self._static_out  # overwritten by the next replay; the detector's lock makes NMS finish first

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


class OnnxRuntimeBackend:
    def __init__(self, path: Path, device: str, precision: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.threads = threads
        # Idle intra-op threads sleep instead of spinning: spinning threads hold the cores that other requests, video
        # decode and encode, and a Space's neighbours need, and wait longest when one of those holds a core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if is_cuda(device) else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision

    def prepare(self, letterboxed: np.ndarray) -> np.ndarray:
        return blob(letterboxed)

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


@lru_cache(maxsize=1)
def _core() -> Any:
    """One OpenVINO core for every backend (a core per model would hold its own plugin and caches). Weights are read
    into memory, not mapped: a cache entry deleted (evicted, healed) or cut by hand under a live model must not take
    the process down with it."""
    import openvino as ov

    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})
    return core


class OpenVINOBackend:
    """An OpenVINO IR compiled for the CPU in latency mode, with an explicit inference precision hint.

    OpenVINO's CPU plugin defaults to bf16 on CPUs with native bf16, as ultralytics' AutoBackend leaves it; naming the
    hint makes ``fp32`` and ``bf16`` both selectable and the benchmark's precision label true. No compiled blob is
    cached (OpenVINO's ``CACHE_DIR``): S4's is 38 MB beside a 37 MB IR, written after the export cache was trimmed to
    its cap, and loading it saved well under a second of a one-second compile (``docs/operations.md``).
    ``config`` adds compile properties (``experiments/ov_profile.py`` turns on ``PERF_COUNT``). An int8 IR runs its
    quantized parts in int8 and the parts left in float in bf16 where the CPU has it (f32 otherwise), as its
    precision hint says nothing else.
    """

    def __init__(self, path: Path, precision: str, config: dict[str, Any] | None = None, threads: int | None = None):
        import openvino as ov

        hint = {"bf16": ov.Type.bf16, "fp16": ov.Type.f16, "int8": ov.Type.bf16 if openvino_cpu_bf16() else ov.Type.f32}
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint.get(precision, ov.Type.f32),
                  **({"INFERENCE_NUM_THREADS": threads} if threads else {}), **(config or {})}
        self.compiled = _core().compile_model(str(path), "CPU", config)
        self.path = path
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    def prepare(self, letterboxed: np.ndarray) -> np.ndarray:
        return blob(letterboxed)

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        self.request.infer({0: x})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def load_backend(model: DetectionModel, runtime: str, device: str, imgsz: int | Shape, precision: str,
                 rewrite: str | None = None, progress: Progress | None = None, threads: int | None = None) -> Backend:
    """A ready-to-run backend (exporting, compiling and running it once as needed; ``progress`` hears about each
    step). ``threads``: the intra-op threads of ONNX Runtime and OpenVINO (None: their own choice).

    A cached export that its runtime cannot load is deleted and exported again, once; a second failure is raised.
    """
    report = progress or (lambda *a, **k: None)
    rewrite = rewrite or default_rewrite(runtime)
    if runtime in ("pytorch", "cudagraph", "compile"):
        mode = {"pytorch": "eager"}.get(runtime, runtime)
        report(0.1, desc=f"preparing {variant_of(model)} for PyTorch ({mode}, {precision})")
        backend: Backend = TorchBackend(model, device, imgsz, precision, mode=mode, rewrite=rewrite)
    elif runtime in EXPORT_FORMATS:
        for attempt in (1, 2):
            path = exports.export(model, runtime, imgsz, precision, rewrite, progress)
            report(0.85, desc=f"loading the {EXPORT_FORMATS[runtime]} model into {runtime}")
            try:
                backend = (OnnxRuntimeBackend(path, device, precision, threads) if runtime == "onnxruntime"
                           else OpenVINOBackend(path, precision, threads=threads))
                # One run on a grey frame: both runtimes allocate their activation memory on the first inference
                # (OpenVINO, S1 at 1280 px: 87 MB beyond a 65 MB compile), which the model pool must charge.
                backend(backend.prepare(np.full((*as_shape(imgsz), 3), 114, np.uint8)))
                break
            except Exception as e:  # a cached export the runtime cannot read: export it afresh, once
                if attempt == 2:
                    raise
                entry = path.parent if EXPORT_FORMATS[runtime] == "onnx" else path.parent.parent
                exports.remove(entry, f"{runtime} could not load it: {type(e).__name__}: {str(e)[:200]}")
    else:
        raise ValueError(f"{runtime} has no backend here")
    report(1.0, desc="ready")
    return backend

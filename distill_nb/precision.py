"""Which number format a run computes in: fp32, bf16 or fp16 autocast, on CUDA or on the CPU.

On CUDA ``precision="auto"`` is bf16 where supported, else fp16. On a CPU it is bf16 only where this machine
runs it measurably faster than fp32 and close enough to it: a one-time check (a transformer-sized MLP forward
and backward, interleaved fp32/bf16 repeats, best of each) whose verdict is cached in
``$DISTILL_NB_CACHE/precision.json`` per CPU model and torch version. ``fp32`` is always available.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from .config import atomic_write_text
from .families import cache_dir

MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much on the check to be chosen automatically
MAX_REL_ERROR = 0.02  # ... and agree with fp32 within this relative error on the same computation


def cpu_bf16_supported() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    Args:
        precision: "fp32", "bf16", "fp16" or "auto", exactly (lower case).

    Raises:
        ValueError: an unknown ``precision`` (it would have run fp32 on a CPU), fp16 on a CPU, or bf16 on a
            CPU without native bf16 (the message says what to use).
    """
    accepted = ("fp32", "bf16", "fp16", "auto")
    if not isinstance(precision, str) or precision not in accepted:
        aliases = {"half": "fp16", "float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32",
                   "single": "fp32", "full": "fp32"}
        key = precision.strip().lower().replace("-", "").replace("_", "") if isinstance(precision, str) else ""
        close = key if key in accepted else aliases.get(key)
        hint = f"did you mean {close!r}? " if close else ""
        raise ValueError(f"precision={precision!r} is not a known precision: {hint}use one of "
                         f"{', '.join(repr(p) for p in accepted)} ('auto' picks bf16/fp16 where it pays).")
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if precision == "fp16":
        raise ValueError("precision='fp16' needs a CUDA device (fp16 autocast on a CPU is slow and needs loss "
                         "scaling); on CPU use 'auto', 'bf16' (where the CPU supports it) or 'fp32'.")
    if precision == "bf16":
        if not cpu_bf16_supported():
            raise ValueError(f"precision='bf16' needs a CPU with native bf16 (AVX512-BF16 or AMX) or a CUDA "
                             f"device; this CPU ({cpu_name()}) has neither: use 'auto' or 'fp32'.")
        return torch.bfloat16
    if precision == "auto" and device.type == "cpu":
        # $DISTILL_NB_CPU_AUTO=fp32|bf16 fixes the choice (reproducible runs, tests); unset: measured once here
        forced = os.environ.get("DISTILL_NB_CPU_AUTO", "").strip().lower()
        if forced in ("fp32", "bf16"):
            return torch.bfloat16 if forced == "bf16" and cpu_bf16_supported() else None
        return torch.bfloat16 if cpu_bf16_check()["use_bf16"] else None
    return None


def autocast_for(dtype: torch.dtype | None, device: torch.device) -> Callable[[], Any]:
    """A context-manager factory: autocast to ``dtype`` on ``device``, or nothing for fp32."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def cpu_bf16_check(refresh: bool = False) -> dict[str, Any]:
    """Measure once whether bf16 autocast pays on this CPU; the verdict is cached (``refresh`` re-measures).

    Returns:
        {use_bf16, supported, fp32_s, bf16_s, speedup, rel_error, cpu, threads, torch, reason}.
    """
    # per CPU model and torch build, not per thread count: every process of a run (DDP ranks run 1 thread
    # each) must make the same choice, and the bf16/fp32 ratio is a property of the cores, not their number
    key = f"{cpu_name()}|bf16={cpu_bf16_supported()}|torch={torch.__version__}"
    path = cache_dir() / "precision.json"
    cached: dict[str, Any] = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = {}  # a corrupt cache is measured again, never trusted
    if not refresh and isinstance(cached.get(key), dict):
        return cached[key]
    result = _measure() if cpu_bf16_supported() else {"supported": False, "use_bf16": False,
                                                      "reason": "no native bf16 on this CPU"}
    result.update(cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__, measured_at=time.time())
    try:
        atomic_write_text(path, json.dumps({**cached, key: result}, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache only costs a re-measure next time
    return result


def _measure(repeats: int = 7) -> dict[str, Any]:
    """fp32 vs bf16 autocast on one transformer MLP block, forward and backward, interleaved, best of each."""
    gen = torch.Generator().manual_seed(0)
    width, rows = 384, 32 * 32  # MiniLM's width; a batch of 32 sentences of 32 tokens
    mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))
    x = torch.randn(rows, width, generator=gen)

    def run(dtype: torch.dtype | None) -> tuple[float, torch.Tensor]:
        mlp.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = mlp(x).float()
        y.square().mean().backward()
        return time.perf_counter() - start, y.detach()

    run(None), run(torch.bfloat16)  # warm-up: oneDNN primitive creation
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(repeats):  # interleaved, so load from other processes hits both alike
        for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            times[name].append(run(torch.bfloat16 if name == "bf16" else None)[0])
    ref, low = run(None)[1], run(torch.bfloat16)[1]
    rel_error = ((low - ref).norm() / ref.norm()).item()
    # the best of the repeats, not the median: on a shared machine other processes only ever add time, and
    # the median of a few repeats flipped the verdict under load (0.93x vs 1.22x on the same CPU)
    fp32_s, bf16_s = min(times["fp32"]), min(times["bf16"])
    speedup = fp32_s / bf16_s
    use = speedup >= MIN_SPEEDUP and rel_error <= MAX_REL_ERROR
    reason = (f"bf16 {speedup:.2f}x fp32 on a {width}-wide MLP block (best of {repeats}), relative error "
              f"{rel_error:.4f}"
              + ("" if use else f" (needs >= {MIN_SPEEDUP}x and <= {MAX_REL_ERROR})"))
    return {"supported": True, "use_bf16": use, "fp32_s": fp32_s, "bf16_s": bf16_s, "speedup": speedup,
            "rel_error": rel_error, "reason": reason}


def describe(dtype: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: how the report and status name a run's precision."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def matmul_rate(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024,
                repeats: int = 8) -> float:
    """GFLOP/s of a ``size`` x ``size`` matmul in ``dtype`` (the device's practical arithmetic peak)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def adamw(params: Any, device: torch.device, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused kernel on CPU and CUDA: one pass over each tensor instead of ~10 elementwise ops.

    On a CPU torch's default is the per-tensor loop; with MiniLM-L6's 11.7M-row word embeddings it was ~45 % of
    a 3-layer student's training step (1 thread), the fused update ~4 %. Same update up to rounding.
    """
    return torch.optim.AdamW(params, fused=device.type in ("cpu", "cuda") or None, **kwargs)


_FREED_KEPT = False


def keep_freed_memory() -> bool:
    """Linux/glibc: keep freed large blocks in the heap for reuse instead of unmapping them (``mallopt``).

    A CPU training step allocates the word embeddings' dense gradient anew (MiniLM-L6: 30,522 x 384 floats,
    47 MB); by default glibc maps fresh pages for it and returns them on free, and zero-filling those fresh pages
    was ~13 % of a 3-layer student's step (1 thread), ~1 % with this. Process-wide: the process may keep up to
    1 GiB of freed memory for reuse. Returns whether it is in effect (False off glibc).
    """
    global _FREED_KEPT
    if _FREED_KEPT or not sys.platform.startswith("linux"):
        return _FREED_KEPT
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the running process's C library
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    _FREED_KEPT = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
    return _FREED_KEPT


__all__ = ["adamw", "amp_dtype", "autocast_for", "cpu_bf16_check", "cpu_bf16_supported", "describe",
           "keep_freed_memory", "matmul_rate"]


def device_for(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The torch device a run uses: ``name`` ("auto", "cpu", "cuda", "cuda:N"), one GPU per process under DDP."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device='auto' or 'cpu'.")
    if name == "cuda" and world > 1:
        return torch.device("cuda", local_rank)
    return torch.device(name)

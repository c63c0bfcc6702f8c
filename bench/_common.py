"""What every ``bench/*.py`` shares: the machine's load before measuring, a train step's FLOP/s against
``torch.mm`` at the step's largest matmul shape, and the checks of ``--smoke`` mode.

Benches import it as ``from _common import ...`` (a script's own folder is on ``sys.path``).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

LOAD_WARN = 1.5  # 1-minute load average above which figures are not trustworthy on this machine


def report_load(warn_above: float = LOAD_WARN) -> dict[str, float]:
    """Print the load average (``uptime``'s three figures) before measuring; warn when the machine is busy.

    On stderr, so ``--json`` output stays parseable; the figures also go into each bench's result.
    """
    one, five, fifteen = os.getloadavg()
    print(f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)", file=sys.stderr)
    if one > warn_above:
        print(
            f"warning: load average {one:.2f} > {warn_above}: other jobs are running; absolute times are "
            "inflated and ratios noisy. Measure alone for figures.",
            file=sys.stderr,
        )
    return {"1min": one, "5min": five, "15min": fifteen}


# -- a train step against the hardware ---------------------------------------------------------------------
# FlopCounterMode knows the CUDA attention kernels but not the CPU one SDPA dispatches to; same formulas.
_CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    ),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v)
    ),
}


class _LargestMatmul(TorchDispatchMode):
    """Records the largest (m, k, n) GEMM a call runs: mm / addmm, and convolutions as their im2col GEMM."""

    def __init__(self) -> None:
        super().__init__()
        self.shape = (0, 0, 0)

    def _see(self, m: int, k: int, n: int) -> None:
        if m * k * n > math.prod(self.shape):
            self.shape = (m, k, n)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet is torch.ops.aten.mm:
            self._see(args[0].shape[0], args[0].shape[1], args[1].shape[1])
        elif packet is torch.ops.aten.addmm:
            self._see(args[1].shape[0], args[1].shape[1], args[2].shape[1])
        elif packet is torch.ops.aten.convolution and not args[6]:  # forward, not transposed
            w = args[1]  # [C_out, C_in / groups, *kernel]
            self._see(out.shape[0] * math.prod(out.shape[2:]), math.prod(w.shape[1:]), w.shape[0])
        return out


@dataclass
class StepCount:
    flops: int  # matmul, convolution and attention FLOPs of one call (forward and backward)
    largest_mm: tuple[int, int, int]  # (m, k, n) of its largest GEMM


def count_step(step: Callable[[], object]) -> StepCount:
    """Run ``step`` once, counting its FLOPs and finding its largest GEMM (a counted call, never timed)."""
    shapes = _LargestMatmul()
    with FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as counter, shapes:
        step()
    return StepCount(counter.get_total_flops(), shapes.shape)


def mm_flops(shape: tuple[int, int, int], reps: int = 3) -> float:
    """FLOP/s of ``torch.mm`` at ``(m, k, n)`` on this machine now (fp32, median of ``reps`` after a warm-up)."""
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times)


def versus_mm(count: StepCount, step_seconds: float, reps: int = 3) -> dict:
    """The step's achieved FLOP/s as a fraction of ``torch.mm`` at its largest GEMM, measured now."""
    achieved = count.flops / step_seconds
    peak = mm_flops(count.largest_mm, reps)
    return {
        "step_gflop": round(count.flops / 1e9, 3),
        "achieved_gflops": round(achieved / 1e9, 2),
        "mm_shape": list(count.largest_mm),
        "mm_gflops": round(peak / 1e9, 2),
        "fraction_of_mm": round(achieved / peak, 3),
    }


def format_versus_mm(name: str, r: dict) -> str:
    m, k, n = r["mm_shape"]
    return (
        f"{name} train FLOP/s {r['achieved_gflops']:.1f} G ({r['step_gflop']:.2f} GFLOP/step) / torch.mm "
        f"[{m}x{k}]@[{k}x{n}] {r['mm_gflops']:.1f} G -> {r['fraction_of_mm']:.3f} (goal >= 0.5)"
    )


# -- --smoke ------------------------------------------------------------------------------------------------
def smoke_check(checks: dict[str, bool]) -> None:
    """``--smoke``: exit non-zero naming each failed check (the comparison ran; parity holds), else say so
    (on stderr, so ``--smoke --json`` still prints only JSON on stdout)."""
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        sys.exit("smoke check failed: " + "; ".join(failed))
    print(f"smoke: ok ({len(checks)} checks)", file=sys.stderr)


def positive(*values: float) -> bool:
    """Every value is a finite number > 0 (a timing or a rate that was actually measured)."""
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)

"""Benchmarks cannot rot: each ``bench/*.py`` runs in ``--smoke`` mode (tiny shapes, one step, the same code
path, the peer included) and must finish with its comparison made: both sides timed, parity checks held.
No speed is asserted. ``bench/serve.py`` has its own test. The shared helpers are checked on cases with a
known answer (a linear layer's train FLOPs, the load warning).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
# the peer each bench compares against (a module name); without it the bench stops with a one-line error
PEERS = {"clip": "open_clip", "dalle": "dalle_pytorch", "gpt": "transformers", "vae": "dall_e"}


def _common():
    # by path: putting bench/ on sys.path would let bench/clip.py shadow the clip package in this process
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def smoke(name: str, *flags: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(PEERS[name]) is None:
        pytest.skip(f"bench/{name}.py's peer {PEERS[name]} is not installed (.ci/peers.txt installs it)")
    cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, f"bench/{name}.py --smoke failed:\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "smoke: ok" in r.stderr
    assert "load average:" in r.stderr  # printed before measuring
    return r


@pytest.mark.parametrize("name", sorted(PEERS))
def test_bench_smoke_prints_ratios_and_hardware_fraction(name):
    out = smoke(name).stdout
    assert "x" in out and "torch.mm" in out, out  # a ratio line and the train step against torch.mm


@pytest.mark.parametrize("name", ["dalle", "vae"])  # gpt.py and clip.py print the same way, slower
def test_bench_smoke_json_is_one_document(name):
    result = json.loads(smoke(name, "--json").stdout)
    assert set(result["load_average"]) == {"1min", "5min", "15min"}
    hw = result["train_vs_mm"]
    assert hw["fraction_of_mm"] > 0 and len(hw["mm_shape"]) == 3


def test_train_flops_of_a_linear_layer_are_six_mkn():
    common = _common()
    m, k, n = 8, 16, 32
    layer = torch.nn.Linear(k, n, bias=False)
    x = torch.randn(m, k, requires_grad=True)
    count = common.count_step(lambda: layer(x).sum().backward())
    # forward x @ W.T, backward grad_x and grad_W: 3 GEMMs of 2mkn FLOPs (the "6 N per token" rule)
    assert count.flops == 6 * m * k * n
    assert sorted(count.largest_mm) == sorted((m, k, n))


def test_attention_on_the_cpu_is_counted():
    common = _common()
    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    count = common.count_step(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    # torch's formulas: forward QK^T and PV, backward 5 GEMMs (the scores recomputed); each 2 * heads * s * s * d
    assert count.flops == 7 * (2 * 2 * 8 * 8 * 4)


def test_convolution_counts_as_its_im2col_gemm():
    common = _common()
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    count = common.count_step(lambda: conv(x))
    assert count.largest_mm == (2 * 5 * 5, 3 * 3 * 3, 8)
    assert count.flops == 2 * (2 * 5 * 5) * (3 * 3 * 3) * 8


def test_load_warning_only_above_threshold(monkeypatch, capsys):
    common = _common()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.3, 0.2))
    assert common.report_load() == {"1min": 0.4, "5min": 0.3, "15min": 0.2}
    err = capsys.readouterr().err
    assert "load average: 0.40, 0.30, 0.20" in err and "warning" not in err
    monkeypatch.setattr(os, "getloadavg", lambda: (2.5, 1.0, 0.5))
    common.report_load()
    assert "warning: load average 2.50 > 1.5" in capsys.readouterr().err


def test_smoke_check_names_each_failure(capsys):
    common = _common()
    with pytest.raises(SystemExit) as e:
        common.smoke_check({"both timed": True, "same logits": False, "same tokens": False})
    assert str(e.value) == "smoke check failed: same logits; same tokens"
    common.smoke_check({"both timed": common.positive(0.1, 2)})
    assert "smoke: ok (1 checks)" in capsys.readouterr().err
    assert not common.positive(0.1, float("nan")) and not common.positive(0.0)

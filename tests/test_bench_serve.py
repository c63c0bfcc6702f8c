"""``bench/serve.py``: its smoke run compares both servers end to end on a tiny model (never a speed), and the
CPU time it reads for a server covers the server's whole process tree (the peer computes in a child)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("httpx")
pytest.importorskip("psutil")


def bench():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_seconds_counts_the_children_of_a_launcher():
    """A launcher that waits while its child computes: the old reading (the launcher's own /proc stat) saw ~0."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    launcher = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"]
    )
    try:
        time.sleep(0.5)
        deadline = time.time() + 60
        while bench().cpu_seconds(launcher.pid) < 0.6 and time.time() < deadline:
            time.sleep(0.1)
        assert bench().cpu_seconds(launcher.pid) >= 0.6
    finally:
        launcher.kill()
        launcher.wait()


def test_smoke_run_compares_both_servers(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serve.py"), "--smoke", "--threads", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("-- 2 clients, load average") for line in lines)
    assert any(line.startswith("ours   2 clients:") for line in lines)
    assert any("of the machine's limit" in line for line in lines)
    if shutil.which("transformers") is not None:  # the peer is installed: the comparison itself ran
        assert any(line.startswith("peer   2 clients:") for line in lines)
        assert any(line.startswith("  2 clients: tokens/s") for line in lines)
    else:
        assert "ours only" in out.stdout


def test_short_runs_are_refused():
    with pytest.raises(SystemExit):
        bench().parse_args(["--requests", "2"])
    with pytest.raises(SystemExit):
        bench().parse_args(["--max-tokens", "32"])
    args = bench().parse_args([])
    assert (args.requests, args.max_tokens) == (3, 64)

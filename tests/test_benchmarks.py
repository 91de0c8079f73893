"""The benchmarks stay runnable: each runs end to end at a small size (the timings are not checked)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_forward_benchmark_runs():
    out = run_benchmark("forward.py", "--cells", "2", "--n-max", "4", "--repeats", "1", "--skip-large")
    for line in ("exact, full 9³ grid", "sampled/dense", "sampled/kspace", "sampling step/kspace",
                 "intensity step", "bound on the end-to-end ratio", "orbit-averaged", "median standard error"):
        assert line in out


def test_paper_benchmark_runs():
    out = run_benchmark("paper_ni.py", "--n-max", "6", "--sampled-adam", "3")
    assert out.count("largest error of the 16 free constants") == 6 and out.count("|z| < 3 for") == 4
    assert "3 Adam epochs" in out


def test_large_volume_benchmark_runs(tmp_path):
    pytest.importorskip("psutil")
    out = run_benchmark("large_volume.py", "--n", "101", "--dir", str(tmp_path))
    assert "peak RSS" in out and "output (101, 101, 101)" in out

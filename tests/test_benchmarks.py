"""The benchmarks stay runnable and keep their numbers: each runs end to end at a small size, and
the numbers it prints that do not depend on the machine's speed are checked."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def numbers(pattern: str, text: str) -> list[float]:
    found = [float(x) for x in re.findall(pattern, text)]
    assert found, f"{pattern!r} not in the output"
    return found


@pytest.mark.heavy
def test_forward_benchmark_runs():
    out = run_benchmark("forward.py", "--cells", "2", "--n-max", "4", "--repeats", "1", "--skip-large")
    # 9³ points of the 2×2×2 supercell grid fall into 35 Laue orbits (counted by hand from the
    # 48-operation group: 5³ = 125 points of the octant 0 ≤ n ≤ 4 give 35 with H ≥ K ≥ L)
    assert "729 points, 35 irreducible" in out
    assert all(t > 0 for t in numbers(r"median\s+([0-9.]+) s", out))
    # orbit averaging over 25–48 members: the standard error falls well below the per-point one
    # (1/√members ≤ 0.2 for independent members; correlated members leave more, measured 0.33)
    ratio = numbers(r"orbits of 25–48 members .*?median standard error ([0-9.]+)", out)[0]
    assert 0.1 < ratio < 0.5


@pytest.mark.heavy
def test_paper_benchmark_runs():
    out = run_benchmark("paper_ni.py", "--n-max", "6", "--sampled-adam", "3")
    worst = numbers(r"largest error of the 16 free constants: ([0-9.e+-]+)", out)
    assert len(worst) == 6
    assert worst[0] < 1e-8 and worst[1] < 1e-8  # Tables 1 and 2 on noise-free data: the Target itself
    assert 1e-5 < worst[-1] < 1e-2  # the noisy target: moved by the noise, within the errors below
    z_ok = numbers(r"\|z\| < 3 for (\d+) of 16", out)
    assert len(z_ok) == 4 and z_ok[-1] >= 15
    assert "3 adam iterations" in out


@pytest.mark.heavy
def test_large_volume_benchmark_runs(tmp_path):
    pytest.importorskip("psutil")
    out = run_benchmark("large_volume.py", "--n", "101", "--dir", str(tmp_path), "--keep")
    # the m-3m orbits of the valid voxels: 51³ octant points hold about 51³/6 canonical ones
    found = re.search(r"([0-9]+) irreducible points of ([0-9]+) \(([0-9]+) valid", out.replace(",", ""))
    n_points, n_available, n_valid = (int(x) for x in found.groups())
    assert n_points == n_available and 15_000 < n_points < 51**3 / 6 + 51**2 and n_valid < 101**3
    assert 0 < numbers(r"peak RSS of this process ([0-9.]+) GB", out)[0] < 2.5
    assert numbers(r"([0-9.]+) MB/s of input", out)[0] > 0
    full = run_benchmark("large_volume.py", "--n", "101", "--dir", str(tmp_path), "--full-volume")
    assert "symmetrized volume (101, 101, 101) written to zarr" in full


@pytest.mark.heavy
def test_gpu_check_says_when_there_is_no_gpu():
    import torch

    out = run_benchmark("gpu_check.py")
    if not torch.cuda.is_available():
        assert out.strip() == "no CUDA device: nothing to check (the GPU tests skip likewise)"
    else:
        assert "GPU−CPU" in out


@pytest.mark.heavy
def test_amortized_benchmark_runs(tmp_path):
    """Simulate, train (2 epochs), predict and refine on one measured spectrum, at a tiny size."""
    out = run_benchmark("amortized_al.py", "--n", "24", "--held-out", "8", "--mesh", "6", "--epochs", "2",
                        "--workers", "0", "--measured", "280", "--members", "2", "--store", str(tmp_path))
    assert "simulated 24 spectra of 4,144 pixels" in out
    assert "(2 members)" in out and "spread/σ" in out
    assert len(numbers(r"\| +([0-9.]+) %", out)) == 15  # five constants: two errors and a coverage each
    assert "refined" in out and (tmp_path / "two_stage.json").exists()


@pytest.mark.heavy
def test_al_arcs_benchmark_runs(tmp_path):
    """The ARCS benchmark end to end on one temperature with a tiny k-mesh, one LM iteration and 3
    Nelder–Mead evaluations: it prints the fit, the frequencies and the comparison, and writes its figures."""
    pytest.importorskip("matplotlib")
    out = run_benchmark("al_arcs.py", "--temperatures", "280", "--mesh", "6", "--nelder-mead", "3", "--max-iter", "1",
                        "--plot", str(tmp_path))
    assert numbers(r"gradient: loss ([0-9.]+)", out)[0] > 0
    assert "X T" in out and "Nelder–Mead: loss" in out
    assert (tmp_path / "al_arcs_spectra.png").exists() and (tmp_path / "al_arcs_constants.png").exists()
    assert (tmp_path / "al_arcs_frequencies.png").exists()


@pytest.mark.heavy
def test_anharmonic_md_benchmark_runs(tmp_path):
    pytest.importorskip("asap3")
    out = run_benchmark("anharmonic_md.py", "--cases", "Cu:300", "--frames", "60", "--repeats", "3", "--n-max", "6",
                        "--shells", "2", "--anharmonic-shells", "1", "--out", str(tmp_path), "--paper-harmonic", "8")
    assert "### Cu 300 K (60 frames" in out and "| k3b0 |" in out and "| p3b0 |" in out  # per-shell K3 and bonds
    assert all(r > 0 for r in numbers(r"\(ratio ([0-9.]+)\)", out))
    # the harmonic target: the anharmonic model adds nothing (constants to 1e-6, cumulants to 1e-9)
    assert numbers(r"anharmonic − harmonic at most ([0-9.e+-]+) eV", out)[0] < 1e-6
    assert numbers(r"cumulants at most ([0-9.e+-]+);", out)[0] < 1e-9

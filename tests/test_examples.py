"""The demo runs end to end; the embedded paper tables equal the shared reference."""

import pathlib
import subprocess
import sys

import pytest

from xtds.datasets import paper_ni_ifcs, paper_ni_tables

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_example(script: str, out) -> str:
    """Run ``examples/<script> --out <out>``; returns its standard output."""
    pytest.importorskip("matplotlib")
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.heavy
def test_demo_prints_table_and_writes_plot(tmp_path):
    out = run_example("ni_phonons.py", tmp_path)
    assert "b2            1  Ni-Ni" in out and "f3" in out
    assert "stable: no imaginary frequencies" in out and "unstable" not in out
    assert_png(tmp_path / "ni_dispersion.png")


@pytest.mark.heavy
def test_fit_demo_fits_an_nxrefine_file(tmp_path):
    out = run_example("fit_ni.py", tmp_path)
    assert "ni_small.nxs" in out and "b2" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:2].strip() in {"b0", "f3"}}
    assert abs(float(rows["b0"][-1])) < 1e-8 and abs(float(rows["f3"][-1])) < 1e-8  # error column
    for name in ("ni_fit_dispersion.png", "ni_fit_convergence.png", "ni_fit_slice_HK0.png"):
        assert_png(tmp_path / name)
    assert (tmp_path / "ni_fit.nc").exists()
    # the headline path uses exact (forward-mode) Jacobians: no fallback to finite differences
    assert "exact Jacobians" in out and "finite differences" not in out, out


def test_embedded_tables_equal_reference(paper_tables):
    ours = paper_ni_tables()
    for key in ("starting_MEAM", "target_EAM_U3", "table1_full_3d", "table2_wedge_10deg"):
        assert ours[key] == paper_tables[key]
    assert paper_ni_ifcs("target")["b2"] == -1.041
    with pytest.raises(ValueError, match="which"):
        paper_ni_ifcs("best")


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    head = text[:1500]
    assert "make demo" in head and "make test" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


@pytest.mark.heavy
def test_powder_file_example_recovers_the_simulated_truth(tmp_path):
    """examples/fit_powder_file.py: the simulated ARCS file read, screened, fitted; with linewidths
    every constant and γ₁ within 3σ of the truth, the linewidth supported by compare_fits."""
    import re

    out = run_example("fit_powder_file.py", tmp_path)
    section = out.split("with linewidths:")[1].split("compare:")[0]
    z = [float(v) for v in re.findall(r"\(([+-][\d.]+)σ\)", section)]
    assert len(z) == 6 and max(abs(v) for v in z) < 3, section
    assert "are supported" in out.split("compare:")[1]
    assert_png(tmp_path / "powder_residuals.png")

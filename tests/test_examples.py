"""The demo runs end to end; the embedded paper tables equal the shared reference."""

import pathlib
import subprocess
import sys

import pytest

from xtds.datasets import paper_ni_ifcs, paper_ni_tables

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_prints_table_and_writes_plot(tmp_path):
    pytest.importorskip("matplotlib")
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ni_phonons.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "b2            1  Ni-Ni" in res.stdout and "f3" in res.stdout
    assert "stable" in res.stdout
    png = tmp_path / "ni_dispersion.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_fit_demo_fits_an_nxrefine_file(tmp_path):
    pytest.importorskip("matplotlib")
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fit_ni.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "ni_small.nxs" in res.stdout and "b2" in res.stdout
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines() if line[:2].strip() in {"b0", "f3"}}
    assert abs(float(rows["b0"][-1])) < 1e-8 and abs(float(rows["f3"][-1])) < 1e-8  # error column
    for name in ("ni_fit_dispersion.png", "ni_fit_convergence.png", "ni_fit_slice_HK0.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (tmp_path / "ni_fit.nc").exists()


def test_embedded_tables_equal_shared(paper_tables):
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

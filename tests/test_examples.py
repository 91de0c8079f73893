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

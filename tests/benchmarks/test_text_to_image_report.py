"""benchmarks/text_to_image_report.py: the page from a fixed results dict (its tables, the
standard errors and the reading against chance), and a --micro end-to-end smoke (slow)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import text_to_image_report as report


def fake_scores(colour: float, shuffled: float, n: int = 28) -> dict:
    se = lambda p: float(np.sqrt(p * (1 - p) / n))
    return {"colour": colour, "colour_se": se(colour), "shuffled_colour": shuffled,
            "shuffled_colour_se": se(shuffled), "clipscore": 0.5, "clipscore_se": 0.01,
            "shuffled_clipscore": 0.4, "shuffled_clipscore_se": 0.01, "images": n}


def fake_results() -> dict:
    return {name: {"kl": {"mean": 0.0123, "se": 0.0012, "max": 0.4},
                   "real images (ceiling)": fake_scores(1.0, 0.0, 7),
                   "unconditional stream only": fake_scores(0.143, 0.143),
                   "no guidance": fake_scores(0.18, 0.14),
                   "guidance s=3": fake_scores(0.75, 0.1)}
            for name in ("seen", "held-out")}


def test_page_has_a_table_per_prompt_set_with_standard_errors_and_the_kl():
    page = report.markdown(fake_results(), {"command": "cmd", "runs": "RUNS", "losses": "L"})
    assert page.count("| images | n | colour check |") == 2
    assert "### seen prompts" in page and "### held-out prompts" in page
    # 0.75 over 28 images: SE sqrt(0.75 * 0.25 / 28) = 0.0818.
    assert "| guidance s=3 | 28 | 0.750 ± 0.082 | 0.100 ± 0.057 |" in page
    assert "0.0123 ± 0.0012 nats a code" in page
    assert "chance 0.143 = 1/7" in page


def test_reading_says_above_chance_only_beyond_two_standard_errors():
    text = report.reading(fake_results())
    # 0.18 vs 0.14 over 28 images each: margin 0.04 < 2 SE (0.196): at chance.
    # 2 SE = 2 hypot(sqrt(.18 * .82 / 28), sqrt(.14 * .86 / 28)) = 0.196.
    assert ("seen, no guidance: colour check 0.180 vs 0.140 with shuffled prompts "
            "(+0.040, 2 SE = 0.196)") in text
    assert text.count("**at chance**") == 2 and text.count("**above chance**") == 2
    assert "ceiling" not in text  # references are not read as models


@pytest.mark.slow
def test_micro_smoke_writes_the_page_and_the_grid(tmp_path):
    """Trains 2-step VQ, SigLIP and Chameleon t2i runs and writes the page (minutes on CPU)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "docs" / "text_to_image.md"
    subprocess.run([sys.executable, "benchmarks/text_to_image_report.py", "--micro",
                    "--steps=2", "--prompts=2", "--samples=2", f"--root={tmp_path / 'runs'}",
                    f"--out={out}"], cwd=root, check=True, env={**os.environ, "PYTHONPATH": root})
    page = out.read_text()
    assert "### held-out prompts" in page and "## Reading" in page
    assert (tmp_path / "docs" / "text_to_image.png").exists()

"""The generative report: its Markdown from given results, and (slow) the whole script on
micro settings: train both runs a few steps, evaluate the restored checkpoints, write the page."""

import os
import sys

import pytest

from vlm_jax.data import world

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import generative_report  # noqa: E402

reports = generative_report.reports  # benchmarks/reports.py, as the script imports it

SETUP = {"command": "python benchmarks/generative_report.py", "runs": "two runs",
         "eval_sizes": {"vqa_size": 400}, "image_size": 32}


def test_markdown_puts_each_number_in_its_table():
    coca = {"captioning/val/cider": 1.23456, "vqa/val/colour": 0.5, "vqa/val/overall": 0.25,
            "pope/adversarial/yes_ratio": 0.75, "genzeroshot/single_object/top1": 0.125,
            "gencompositional/count/group": 0.0625, "compositional/count/blind_acc2": 0.5}
    siglip = {"zeroshot/single_object/top1": 0.9875}
    page = generative_report.markdown(siglip, coca, [("a red circle.", "a red circle.")], SETUP)
    lines = page.splitlines()
    assert "| CIDEr-D | 1.235 |" in lines
    assert "| colour | 0.500 | 0.143 |" in lines  # 7 colours
    assert "| spatial | — | 0.250 |" in lines  # a 2x2 grid at 32 px; no result given
    assert any(line.startswith("| adversarial |") and "| 0.750 |" in line for line in lines)
    assert "| SigLIP tiny | embedding cosine | 0.988 | — |" in lines
    assert "| CoCa tiny | caption likelihood | 0.125 | — |" in lines
    assert "| CoCa tiny (likelihood) | count | — | — | — | 0.062 | — |" in lines
    assert "| a red circle. | a red circle. |" in lines
    assert len([line for line in lines if line.startswith("| SigLIP tiny | ")]) == (
        1 + len(world.PROBE_KINDS))


def test_run_config_applies_steps_batch_and_micro_sizes():
    config = reports.run_config("configs/coca.py:tiny", 7, 16, micro=True)
    assert (config.total_steps, config.batch_size) == (7, 16)
    assert config.evals.names == ()
    assert config.evals.vqa_size == reports.MICRO_EVALS["vqa_size"]
    assert reports.run_config("configs/siglip.py:tiny", 0, 0, False).total_steps == 600


@pytest.mark.slow
def test_micro_report_end_to_end(run_micro_report):
    page, results = run_micro_report("generative_report.py", "--samples=2")
    assert "| CIDEr-D | " in page and "| overall | " in page
    assert "captioning/val/cider" in results["coca_tiny"]
    assert "zeroshot/single_object/top1" in results["siglip_tiny"]
    # A second call reuses both runs (no training) and gives the same numbers.
    page, again = run_micro_report("generative_report.py", "--samples=2")
    assert page.count("reused the finished run") == 2
    assert again == results

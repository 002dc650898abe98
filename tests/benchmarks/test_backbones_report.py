"""The backbones report: its trained-parameter count and its Markdown from given results."""

import os
import sys
import types

import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import backbones_report  # noqa: E402


def test_trained_parameters_leave_out_what_the_rules_freeze():
    params = {"lm": {"w": np.zeros((3, 4)), "b": np.zeros(4)}, "projector": {"k": np.zeros(5)}}
    config = ml_collections.ConfigDict({"optim": {"param_rules": (("lm/.*", "freeze"),)}})
    run = types.SimpleNamespace(params=params, config=config)
    assert backbones_report.trained_parameters(run) == (5, 21)
    config.optim.param_rules = ()
    assert backbones_report.trained_parameters(run) == (21, 21)


def test_specs_chain_stage_two_to_stage_one_and_the_families_tower():
    specs = backbones_report.specs("/b", "/f")
    assert "image=/f/siglip_tiny" in specs["llava1_smollm2"]
    assert "stage1=/b/llava1_smollm2" in specs["llava_smollm2"]


def test_markdown_puts_each_number_in_its_column():
    facts = {"trained": 12_345, "total": 1_234_567, "steps": 60, "batch": 16, "done": "trained",
             "train_seconds": 300.0, "cpu_seconds": 550.0}
    rows = {"llava_smollm2": (("LLaVA", "SmolLM2-135M", "projector + LM"), facts,
                              {"vqa/val/count": 0.625, "vqa/val/overall": 0.5,
                               "vqa/val/prior_count": 0.375, "vqa/val/chance": 0.3,
                               "captioning/val/cider": 0.25})}
    page = backbones_report.markdown(rows, {"command": "c", "specs": {"a": "s"},
                                            "image_size": 32})
    lines = page.splitlines()
    # Columns: VQA colour, count, spatial, yesno, overall, POPE, CIDEr.
    assert ("| LLaVA | SmolLM2-135M | projector + LM | 0.012 M / 1.23 M | 60 × 16 "
            "| trained in 300 s (550 CPU s) | — | 0.625 | — | — | 0.500 | — | 0.250 |") in lines
    assert "| blind prior |  |  |  |  |  | — | 0.375 | — | — | — | — | — |" in lines
    chance = next(line for line in lines if line.startswith("| chance"))
    assert chance.endswith("| 0.300 | — | — |")

"""The CM3leon report: its Markdown and reading from given results, and (slow) the whole script
on micro settings: VQ, retriever, both stage-1 runs and both stage-2 runs, evaluated, written."""

import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import cm3leon_report  # noqa: E402


def fake_results():
    results = {}
    for k, name in enumerate(cm3leon_report.RUNS):
        results[name] = {"captioning/val/cider": 0.1 * k, "vqa/val/overall": 0.3 + 0.1 * k,
                         "vqa/val/colour": 0.25, "t2i/guidance/colour_accuracy": 0.5 - 0.1 * k,
                         "t2i/no_guidance/colour_accuracy": 0.125, "t2i/chance": 1 / 7,
                         "vqa/val/chance": 0.286, "vqa/val/prior_overall": 0.4375,
                         "vqa/val/prior_colour": 0.2, "train_loss": 2.0 + k}
    return results


def test_markdown_puts_each_number_in_its_row_and_the_reading_follows_them():
    results = fake_results()
    config = types.SimpleNamespace(total_steps=160, batch_size=16)
    outcome = {"done": "trained", "train_seconds": 200.0, "cpu_seconds": 380.0}
    info = {"command": "python benchmarks/cm3leon_report.py", "specs": {
        name: spec for name, (_, spec) in cm3leon_report.RUNS.items()}, "vq": "v",
        "retriever": "r", "load": "1.0 / 1.0 / 1.0", "eval_seconds": 12.0,
        "prerequisites": "reused", "eval_sizes": {"captioning_size": 64, "vqa_size": 64},
        "t2i_prompts": 7, "t2i_samples": 4,
        "chance": {"colour": 1 / 7, "count": 0.25, "spatial": 0.25, "yesno": 0.5},
        "reading": cm3leon_report.reading(results, {"vqa/val/overall": 64,
                                                    "t2i/guidance/colour_accuracy": 28})}
    page = cm3leon_report.markdown(results, dict.fromkeys(cm3leon_report.RUNS, config),
                                   dict.fromkeys(cm3leon_report.RUNS, outcome), info)
    lines = page.splitlines()
    assert ("| stage 2 from retrieved=2 | 160 x 16 | trained in 200 s (380 CPU s) | 5.000 | "
            "0.300 | 0.600 | 0.125 | 0.200 |") in lines
    assert "| chance / blind prior |  |  |  |  | 0.286 / 0.438 | 0.143 | 0.143 |" in lines
    assert "| blind prior | 0.200 | — | — | — |" in lines
    # stage 2: CIDEr 0.3 vs 0.2 (higher), VQA 0.6 vs 0.5 (higher), t2i 0.2 vs 0.3 (lower)
    assert ("- After stage 2, captioning CIDEr is 0.300 from the retrieval-augmented stage 1 "
            "against 0.200 from the plain one (higher).") in lines
    # VQA 0.6 vs 0.5 over 64 items: 2 sqrt((0.25 + 0.24) / 64) = 0.175 > 0.1
    assert any("VQA accuracy is 0.600" in line and "is 0.175, so it is within the noise" in line
               for line in lines)
    assert any("text -> image colour accuracy is 0.200" in line and "(lower)" in line
               for line in lines)
    assert any("The best VQA accuracy, 0.600, is above the blind answer prior 0.438" in line
               for line in lines)


@pytest.mark.slow
def test_micro_report_trains_all_four_runs_and_writes_the_page(run_micro_report):
    page, saved = run_micro_report("cm3leon_report.py")
    assert set(saved["results"]) == set(cm3leon_report.RUNS)
    for name, (label, _) in cm3leon_report.RUNS.items():
        assert any(line.startswith(f"| {label} | 2 x 16 |") for line in page.splitlines())
        assert 0 <= saved["results"][name]["t2i/guidance/colour_accuracy"] <= 1
        assert saved["results"][name]["train_loss"] > 0

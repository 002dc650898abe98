"""The families report: its run plan, its Markdown from given results, and (slow) the whole
script on micro settings."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import families_report  # noqa: E402


def test_plan_trains_every_family_at_equal_steps_and_batch():
    configs = families_report.plan(0, 0, micro=False)
    assert list(configs) == list(families_report.FAMILIES)
    assert {(c.total_steps, c.batch_size) for c in configs.values()} == {
        (families_report.STEPS, families_report.BATCH)}
    assert {(c.total_steps, c.batch_size) for c in families_report.plan(
        7, 32, micro=True).values()} == {(7, 32)}


def test_markdown_puts_each_number_in_its_column_and_dashes_what_a_family_cannot_do():
    configs = families_report.plan(0, 0, micro=False)
    results = {name: {} for name in configs}
    results["siglip_tiny"] = {"zeroshot/single_object/top1": 0.9875,
                              "zeroshot/single_object/chance": 1 / 24,
                              "compositional/count/acc2": 0.625,
                              "compositional/count/blind_acc2": 0.5625}
    results["coca_tiny"] = {"captioning/val/cider": 1.8904, "vqa/val/overall": 0.4325,
                            "vqa/val/chance": 0.29, "vqa/val/prior_overall": 0.4,
                            "pope/adversarial/f1": 0.125}
    results["maskvlm_tiny"] = {"itm_retrieval/val/i2t_r1": 0.25,
                               "itm_compositional/attribute/acc2": 0.75}
    facts = {name: {"parameters": 1_234_567, "outcome": {"done": "trained",
                                                         "train_seconds": 61.0}}
             for name in configs}
    page = families_report.markdown(results, configs, facts,
                                    {"command": "c", "eval_sizes": {"probe_size": 8}})
    lines = page.splitlines()
    # Columns: zero-shot, held-out, R@1 x2, 3 probes' acc2, ITM R@1, 3 probes' ITM acc2,
    # CIDEr, VQA, POPE.
    assert ("| SigLIP | contrastive | 1.23 M | trained in 61 s | 0.988 | — | — | — | — | — "
            "| 0.625 | — | — | — | — | — | — | — |") in lines
    assert ("| CoCa | generative | 1.23 M | trained in 61 s | — | — | — | — | — | — | — "
            "| — | — | — | — | 1.890 | 0.432 | 0.125 |") in lines
    assert ("| MaskVLM | masking | 1.23 M | trained in 61 s | — | — | — | — | — | — | — "
            "| 0.250 | — | 0.750 | — | — | — | — |") in lines
    assert ("| chance |  |  |  | 0.042 | — | — | — | 0.500 | 0.500 | 0.500 | — | 0.500 | 0.500 "
            "| 0.500 | — | 0.290 | — |") in lines
    # The blind row: the probes' image-free scores and VQA's answer prior.
    assert ("| blind (no image) |  |  |  | — | — | — | — | — | — | 0.562 | — | — | — | — | — "
            "| 0.400 | — |") in lines


@pytest.mark.slow
def test_micro_report_end_to_end(run_micro_report):
    page, results = run_micro_report("families_report.py")
    assert set(results["results"]) == set(families_report.FAMILIES)
    assert "captioning/val/cider" in results["results"]["coca_tiny"]
    assert "captioning/val/cider" not in results["results"]["siglip_tiny"]
    assert "| CoCa | generative |" in page

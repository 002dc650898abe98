"""The contrastive report: its run plan, its Markdown from given results, and (slow) the whole
script on micro settings."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import contrastive_report  # noqa: E402


def test_plan_puts_siglip_beside_lit_at_equal_steps():
    configs = contrastive_report.plan(0, 0, micro=False)
    assert list(configs) == ["siglip_tiny", "llip_tiny", "siglip_tiny_short", "lit_minilm"]
    lit, short = configs["lit_minilm"], configs["siglip_tiny_short"]
    assert (short.total_steps, short.batch_size) == (lit.total_steps, lit.batch_size)
    assert short.model.to_dict() == configs["siglip_tiny"].model.to_dict()
    assert configs["siglip_tiny"].total_steps == configs["llip_tiny"].total_steps == 600
    assert lit.model.text.type == "bert" and lit.optim.param_rules == (("text_tower/.*",
                                                                         "freeze"),)
    # Equal steps everywhere: the short SigLIP run would repeat the other one.
    assert list(contrastive_report.plan(5, 16, micro=True)) == [
        "siglip_tiny", "llip_tiny", "lit_minilm"]


def test_markdown_puts_each_number_in_its_table():
    configs = contrastive_report.plan(0, 0, micro=False)
    results = {name: {} for name in configs}
    results["siglip_tiny"] = {"zeroshot/single_object/top1": 0.9875,
                              "zeroshot/single_object/chance": 1 / 24,
                              "retrieval/heldout/t2i_r1": 0.125,
                              "compositional/count/blind_acc2": 0.5}
    results["lit_minilm"] = {"compositional/attribute/group": 0.0625}
    outcomes = {name: {"done": "trained", "train_seconds": 61.0} for name in configs}
    outcomes["llip_tiny"] = {"done": "reused", "train_seconds": None}
    page = contrastive_report.markdown(results, configs, outcomes,
                                       {"command": "c", "eval_sizes": {"probe_size": 8}})
    lines = page.splitlines()
    lit_steps = configs["lit_minilm"].total_steps
    assert "| SigLIP tiny (600 × 256) | 0.988 | — | — | — | — | 0.125 |" in lines
    assert "| chance | 0.042 | — | — | — | — | — |" in lines
    assert f"| LiT MiniLM ({lit_steps} × 256) | — | — | — | — | 0.062 | — |" in lines
    assert "| blind (no image) | — | — | 0.500 | — | — | — |" in lines
    assert any(line.startswith("| llip_tiny |") and "reused the finished run (trained "
               "elsewhere)" in line for line in lines)
    assert any(line.startswith("| lit_minilm |") and "6 × 384, MiniLM (BERT), frozen" in line
               and "trained in 61 s" in line for line in lines)


@pytest.mark.slow
def test_micro_report_end_to_end(run_micro_report):
    page, results = run_micro_report("contrastive_report.py")
    assert "| LiT MiniLM (2 × 16) |" in page and "| Llip tiny (2 × 16) |" in page
    assert set(results) == {"siglip_tiny", "llip_tiny", "lit_minilm"}
    for result in results.values():
        assert 0.0 <= result["zeroshot/single_object/top1"] <= 1.0

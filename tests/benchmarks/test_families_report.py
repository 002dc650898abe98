"""The families report: its run plan, its Markdown from given results, and (slow) the whole
script on micro settings."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import families_report  # noqa: E402

# Chameleon's config reads its VQ prerequisite's sizes: the plan tests leave it out.
SPECS = {name: spec for name, spec in families_report.specs("/r").items()
         if name != "chameleon_tiny"}


def test_plan_trains_the_prerequisites_then_every_row():
    configs = families_report.plan(SPECS, 0, 0, micro=False)
    assert families_report.specs("/r")["chameleon_tiny"].endswith("vq=/r/vq_tiny")
    assert list(configs) == [*families_report.PREREQUISITES,
                             *(name for name in families_report.FAMILIES if name in SPECS)]
    assert SPECS["llava1_tiny"].endswith("image=/r/siglip_tiny,lm=/r/lm_tiny")
    # The first families at equal compute; the later rows as their :tiny configs stand.
    equal = (families_report.EQUAL_STEPS, families_report.EQUAL_BATCH)
    for name, config in configs.items():
        own = families_report.reports.run_config(SPECS[name], 0, 0, micro=False)
        expected = equal if name in families_report.EQUAL_COMPUTE else (
            own.total_steps, own.batch_size)
        assert (config.total_steps, config.batch_size) == expected, name
    assert (configs["maskvlm_tiny"].total_steps, configs["maskvlm_tiny"].batch_size) != equal
    assert {(c.total_steps, c.batch_size) for c in families_report.plan(
        SPECS, 7, 32, micro=True).values()} == {(7, 32)}


def test_markdown_puts_each_number_in_its_column_and_dashes_what_a_family_cannot_do():
    configs = families_report.plan(SPECS, 0, 0, micro=False)
    results = {name: {} for name in families_report.FAMILIES}
    results["siglip_tiny"] = {"zeroshot/single_object/top1": 0.9875,
                              "zeroshot/single_object/chance": 1 / 24,
                              "compositional/count/acc2": 0.625,
                              "compositional/count/blind_acc2": 0.5625}
    results["coca_tiny"] = {"captioning/val/cider": 1.8904, "vqa/val/overall": 0.4325,
                            "vqa/val/chance": 0.29, "vqa/val/prior_overall": 0.4,
                            "pope/adversarial/f1": 0.125, "vqa/val/2shot_overall": 0.25,
                            "vqa/val/count": 0.5, "vqa/val/prior_count": 0.375}
    results["maskvlm_tiny"] = {"itm_retrieval/val/i2t_r1": 0.25,
                               "itm_compositional/attribute/acc2": 0.75,
                               "reconstruction/val/masked_mse": 0.0214,
                               "reconstruction/val/mean_colour_mse": 0.18}
    parameters = {name: 1_234_567 for name in results}
    outcomes = {name: {"done": "trained", "train_seconds": 61.0, "cpu_seconds": 100.4}
                for name in configs}
    outcomes["lm_tiny"] = {"done": "reused", "train_seconds": 12.0, "cpu_seconds": None}
    page = families_report.markdown(results, configs, parameters,
                                    {"command": "c", "eval_sizes": {"probe_size": 8},
                                     "image_size": 32,
                                     "specs": SPECS, "outcomes": outcomes})
    lines = page.splitlines()
    assert ("| lm_tiny | `configs/lm.py:tiny` | 300 × 32 "
            "| reused the finished run (trained in 12 s) |") in lines
    assert ("| coca_tiny | `configs/coca.py:tiny` | 300 × 256 | trained in 61 s (100 CPU s) |"
            in lines)
    # Columns: zero-shot, held-out, R@1 x2, 3 probes' acc2, ITM R@1, 3 probes' ITM acc2,
    # CIDEr, VQA, VQA 2-shot, POPE, masked-patch MSE.
    assert ("| SigLIP | contrastive | 1.23 M | 0.988 | — | — | — | — | — "
            "| 0.625 | — | — | — | — | — | — | — | — | — |") in lines
    assert ("| CoCa | generative | 1.23 M | — | — | — | — | — | — | — "
            "| — | — | — | — | 1.890 | 0.432 | 0.250 | 0.125 | — |") in lines
    assert ("| MaskVLM | masking | 1.23 M | — | — | — | — | — | — | — "
            "| 0.250 | — | 0.750 | — | — | — | — | — | 0.021 |") in lines
    assert ("| chance |  |  | 0.042 | — | — | — | 0.500 | 0.500 | 0.500 | — | 0.500 | 0.500 "
            "| 0.500 | — | 0.290 | — | — | — |") in lines
    # The blind row: the probes' image-free scores and VQA's answer prior.
    assert ("| blind (no image) |  |  | — | — | — | — | — | — | 0.562 | — | — | — | — | — "
            "| 0.400 | — | — | 0.180 |") in lines
    # VQA by type: captioners only; the prior per kind; chance is 1 / the kind's candidates.
    assert "| CoCa | — | 0.500 | — | — | 0.432 | 0.250 |" in lines
    assert "| blind prior | — | 0.375 | — | — | 0.400 | — |" in lines
    assert not any(line.startswith("| SigLIP | —") for line in lines)
    chance_row = next(line for line in lines if line.startswith("| chance | 0."))
    assert chance_row.endswith("| 0.290 | — |")


@pytest.mark.slow
def test_micro_report_end_to_end(run_micro_report):
    page, results = run_micro_report("families_report.py")
    assert set(results["results"]) == set(families_report.FAMILIES)
    assert "captioning/val/cider" in results["results"]["coca_tiny"]
    assert "captioning/val/cider" not in results["results"]["siglip_tiny"]
    assert "| CoCa | generative |" in page


def test_a_rows_untrained_evals_are_left_out():
    result = {"zeroshot/single_object/top1": 0.0, "itm_compositional/count/acc2": 0.49,
              "itm_retrieval/val/i2t_r1": 0.0, "reconstruction/val/masked_mse": 0.28}
    assert families_report.trained_results("visualbert_tiny", result) == {
        "itm_compositional/count/acc2": 0.49}
    assert families_report.trained_results("maskvlm_tiny", result) == result

"""The generative-classifiers report: which scorings a model gets, its page from a fixed
results dict (a row per model and scoring, "—" where a scoring gives no number, chance
columns), and (slow) the whole script on micro settings."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import generative_classifiers_report as report  # noqa: E402

SETUP = {"command": "c", "runs": "r", "eval_sizes": {"probe_size": 8}, "alphas": [0.0, 0.5, 1.0],
         "labels": {"siglip_tiny": "SigLIP", "coca_tiny": "CoCa", "chameleon_tiny": "Chameleon"},
         "capabilities": {"siglip_tiny": ["scorer"], "coca_tiny": ["captioner", "scorer"],
                          "chameleon_tiny": ["captioner", "image_likelihood"]},
         "probe_size": 8}
RESULTS = {
    "siglip_tiny": {"zeroshot/single_object/top1": 0.9875,
                    "zeroshot/single_object/chance": 1 / 24,
                    "zeroshot/heldout_single_object/top1": 0.25,
                    "zeroshot/heldout_single_object/chance": 1 / 28,
                    "compositional/count/acc2": 0.625, "compositional/count/group": 0.125,
                    "compositional/count/blind_acc2": 0.4375},
    "coca_tiny": {"genzeroshot/single_object/top1": 0.75,
                  "gendebiased/single_object/top1_a0": 0.75,
                  "gendebiased/single_object/top1_a0.5": 0.8125,
                  "gendebiased/single_object/top1_a1": 0.5,
                  "gendebiased/single_object/blind_top1": 0.0625,
                  "gencompositional/count/acc2": 0.5625,
                  "gendebiased/count/acc2_a0": 0.5625, "gendebiased/count/acc2_a1": 0.6875,
                  "gendebiased/count/blind_acc2": 0.375},
    "chameleon_tiny": {"imgzeroshot/single_object/top1": 0.0,
                       "imgzeroshot/single_object/chance": 1 / 24,
                       "imgcompositional/count/acc2": 0.5},
}
TIMINGS = {"siglip_tiny": {"cosine": 3.2}, "coca_tiny": {"cosine": 4.0, "debiased": 25.9},
           "chameleon_tiny": {"image likelihood": 61.0}}


def row(page: str, *cells: str) -> list[str]:
    """The cells of the first table row starting with `cells`."""
    for line in page.splitlines():
        parts = [part.strip() for part in line.strip("|").split("|")]
        if parts[:len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells} in the page")


def test_each_model_gets_every_scoring_its_trainer_serves():
    assert report.scorings_of(frozenset({"scorer"})) == ["cosine"]
    assert report.scorings_of(frozenset({"scorer", "captioner"})) == [
        "cosine", "caption likelihood", "debiased"]
    assert report.scorings_of(frozenset({"captioner", "image_likelihood"})) == [
        "caption likelihood", "debiased", "image likelihood"]
    # alpha 0 is the caption-likelihood row itself: debiased adds one row per alpha > 0
    assert [label for label, _, _ in report.rows_of(["debiased"], (0.0, 0.5, 1.0))] == [
        "debiased α=0.5", "debiased α=1"]


def test_the_page_puts_each_number_in_its_row_and_column_and_dashes_the_missing():
    page = report.markdown(RESULTS, TIMINGS, SETUP)
    # zero-shot: seen top-1, held-out top-1, seen chance, held-out chance, blind seen, held-out
    assert row(page, "SigLIP", "cosine")[2:] == ["0.988", "0.250", "0.042", "0.036", "—", "—"]
    assert row(page, "CoCa", "caption likelihood")[2:] == ["0.750", "—", "—", "—", "0.062", "—"]
    assert row(page, "CoCa", "debiased α=0.5")[2:4] == ["0.812", "—"]
    assert row(page, "Chameleon", "image likelihood")[2:5] == ["0.000", "—", "0.042"]
    # probes: relation, attribute, count x (acc2, group, blind acc2); SigLIP only has count
    assert row(page, "SigLIP", "cosine", "—")[2:] == ["—"] * 6 + ["0.625", "0.125", "0.438"]
    assert row(page, "CoCa", "debiased α=1", "—")[-3:] == ["0.688", "—", "0.375"]
    assert row(page, "Chameleon", "image likelihood", "—")[-3:] == ["0.500", "—", "—"]
    assert row(page, "chance")[2:] == ["0.500", "0.167", "—"] * 3
    # the cosine rows of a model without towers do not exist; no 0 stands for a missing metric
    with pytest.raises(AssertionError):
        row(page, "Chameleon", "cosine")
    assert row(page, "Chameleon", "image likelihood", "61") == ["Chameleon",
                                                                 "image likelihood", "61"]
    assert "numbers: 0.0e+00" in page  # gendebiased α=0 equals the plain likelihood here


def test_the_reading_follows_the_numbers():
    page = report.markdown(RESULTS, TIMINGS, SETUP)
    # count: CoCa debiased α=1 (0.688) beats SigLIP's cosine 0.625
    assert ("**count**: the best generative scoring (CoCa debiased α=1, acc2 0.688) beats the "
            "best cosine (SigLIP, 0.625)") in page
    assert "CoCa, zero-shot seen top-1: debiasing helps most at α=0.5 (0.750 → 0.812)" in page
    assert "seen top-1 0.000 against chance 0.042 (not above)" in page
    assert ("**zero-shot seen**: the best generative scoring (CoCa debiased α=0.5, top-1 0.812) "
            "does not beat the best cosine (SigLIP, 0.988)") in page
    worse = {**RESULTS, "coca_tiny": {**RESULTS["coca_tiny"],
                                      "gendebiased/count/acc2_a1": 0.5}}
    page = report.markdown(worse, TIMINGS, SETUP)
    assert "(CoCa caption likelihood, acc2 0.562) does not beat the best cosine" in page
    assert "CoCa, count acc2: debiasing does not help (α=0: 0.562; α=1: 0.500)" in page
    tie = {**RESULTS, "coca_tiny": {**RESULTS["coca_tiny"],
                                    "gendebiased/count/acc2_a1": 0.625}}
    assert ("(CoCa debiased α=1, acc2 0.625) does not beat the best cosine (SigLIP, 0.625)"
            in report.markdown(tie, TIMINGS, SETUP))  # a tie is no win


@pytest.mark.slow
def test_the_micro_report_runs_end_to_end(tmp_path):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    out = tmp_path / "page.md"
    command = [sys.executable, "benchmarks/generative_classifiers_report.py", "--micro",
               "--steps=2", f"--families={tmp_path / 'runs'}", f"--out={out}",
               "--models=siglip_tiny,coca_tiny,chameleon_tiny"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    page = out.read_text()
    for cells in (("SigLIP", "cosine"), ("CoCa", "caption likelihood"),
                  ("CoCa", "debiased α=1"), ("Chameleon", "image likelihood")):
        assert float(row(page, *cells)[2]) >= 0.0  # a number, not —
    assert float(row(page, "CoCa", "caption likelihood")[4]) == pytest.approx(1 / 24, abs=1e-3)

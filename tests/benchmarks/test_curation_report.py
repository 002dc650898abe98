"""benchmarks/curation_report.py end to end in --micro mode (seven 2-step runs)."""

import pytest


@pytest.mark.slow  # seven tiny trainings and their evals: minutes on a shared CPU
def test_curation_report_micro(run_micro_report, tmp_path):
    page, saved = run_micro_report("curation_report.py", "--pool=256", "--clusters=4",
                                    # 2-step embeddings are close: only exact copies at 1e-5.
                                    "--eps=1e-5")
    composition, results = saved["composition"], saved["results"]
    assert set(results) == {"clean", "noisy", "heuristics", "clipscore", "semdedup",
                            "metaclip", "all"}
    assert composition["clean"]["mismatched"] == 0.0
    # Top 70% of 256 pairs by CLIP score.
    assert composition["clipscore"]["kept"] == round(256 * 0.7)
    # Copies in the noisy pool are exact: SemDeDup removes every one it compares.
    assert composition["semdedup"]["kept"] < composition["noisy"]["kept"]
    assert "| all |" in page and (tmp_path / "report.png").exists()

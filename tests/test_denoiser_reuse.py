"""`diffusion.denoiser_from`: a sweep samples one fitted denoiser with other knobs; a denoiser
fitted under other settings is refused before anything is written."""

import json

import pytest
from test_cli import FAST_DIGITS, assert_one_line_error, featdiff

CONFIG = "configs/digits_ldmlr.yaml"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reuse") / "source"
    result = featdiff("run", CONFIG, *FAST_DIGITS, "--set", "compute.threads=1", "--out", str(folder))
    assert result.returncode == 0, result.stderr
    return folder


def test_a_reused_denoiser_samples_as_its_own_run_did_without_training(source, tmp_path):
    again = tmp_path / "again"
    reuse = ["--set", f"diffusion.denoiser_from={source}", "--set", "evaluation.controls=false", "--set", "compute.threads=1"]
    result = featdiff("run", CONFIG, *FAST_DIGITS, *reuse, "--out", str(again))
    assert result.returncode == 0, result.stderr
    assert (again / "pseudo_features.safetensors").read_bytes() == (source / "pseudo_features.safetensors").read_bytes()
    lines = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert not [line for line in lines if line["stage"] == "denoiser"]  # no training step was logged
    results = json.loads((again / "results.json").read_text())
    assert set(results["controls"]) == {"ce"}  # controls off: only the untrained encoder's head


def test_a_denoiser_fitted_under_other_settings_is_refused_before_the_run_starts(source, tmp_path):
    out = tmp_path / "refused"
    result = featdiff(
        "run", CONFIG, *FAST_DIGITS, "--set", "diffusion.steps=300", "--set", f"diffusion.denoiser_from={source}", "--out", str(out)
    )
    assert_one_line_error(result, "diffusion.denoiser_from", "diffusion.steps = 200", "300")
    assert not out.exists()


def test_a_folder_that_is_no_finished_run_and_another_method_are_refused(tmp_path):
    out = tmp_path / "refused"
    result = featdiff("run", CONFIG, "--set", f"diffusion.denoiser_from={tmp_path}", "--out", str(out))
    assert_one_line_error(result, "is not a featdiff run folder")
    result = featdiff("run", CONFIG, "--set", "method=gaussian", "--set", f"diffusion.denoiser_from={tmp_path}", "--out", str(out))
    assert_one_line_error(result, "config key 'diffusion.denoiser_from'", "method gaussian")
    assert not out.exists()

"""The Python API: the README's example runs as written, and the API checks its inputs as the CLI does."""

import re
from pathlib import Path

import pytest
import torch

import featdiff
from featdiff.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_api_example_runs_as_written(capsys):
    text = README.read_text()
    section = text[text.index("**A Python API.**") :]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    exec(compile(block, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert float(printed[0]) > 40  # five blobs; chance is 20
    assert "fc_retrain_la" in printed[1] and "gaussian" in printed[1]


def test_samples_are_reproducible_and_follow_the_knobs():
    g = torch.Generator().manual_seed(1)
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([100, 30, 10]))
    features = torch.randn(140, 6, generator=g) + 4 * labels[:, None].float()
    plain = featdiff.fit(features, labels, generator="gaussian")
    hot = featdiff.fit(features, labels, generator="gaussian", config={"generation": {"temperature": 2.0}})
    a, b = plain.sample_per_class(2000, seed=3)[0], plain.sample_per_class(2000, seed=3)[0]
    assert torch.equal(a, b)
    x, y = hot.sample_per_class(2000, seed=3)
    assert torch.allclose(x[y == 1].std(0) / a[y == 1].std(0), torch.full((6,), 2.0), rtol=1e-4)
    fill, fill_labels = plain.balanced_fill()
    assert torch.bincount(fill_labels).tolist() == [0, 70, 90]


def test_the_api_checks_its_inputs_and_its_config_in_one_line():
    features, labels = torch.randn(10, 4), torch.tensor([0, 1] * 5)
    with pytest.raises(UserError, match="NaN or infinite"):
        featdiff.fit(torch.full((10, 4), float("nan")), labels, generator="gaussian")
    with pytest.raises(UserError, match="no record of class 1"):
        featdiff.fit(features, torch.tensor([0, 2] * 5), generator="gaussian")
    with pytest.raises(UserError, match="unknown config key 'diffusion.stepz'"):
        featdiff.fit(features, labels, config={"diffusion": {"stepz": 3}})
    with pytest.raises(UserError, match="labels must lie in 0..1"):
        featdiff.fit(features, labels, generator="gaussian").sample(torch.tensor([5]))

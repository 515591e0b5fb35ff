"""The knob search chooses on the validation part alone."""

import pytest

from featdiff.config import config_from_dict
from featdiff.pipeline import execute
from featdiff.runs import Run
from featdiff.selection import Knob, coordinate_search, merged


def _fake_results(validation: float, report: float) -> dict:
    return {"tuned": {"validation": {"acc": {"overall": validation}}, "report": {"acc": {"overall": report}}}}


def test_the_search_keeps_an_option_only_when_it_beats_the_choice_on_validation():
    scores = {  # (a, b) -> (validation, report): the report part would pick other options
        (0, 0): (70.0, 90.0),
        (1, 0): (75.0, 10.0),
        (2, 0): (75.0, 95.0),  # a tie with (1, 0): the earlier option stays
        (1, 1): (74.0, 99.0),
        (1, 2): (80.0, 1.0),
    }
    knobs = [Knob("a", ({}, {"a": 1}, {"a": 2})), Knob("b", ({}, {"b": 1}, {"b": 2}))]
    evaluated = []

    def evaluate(values):
        key = (values.get("a", 0), values.get("b", 0))
        evaluated.append(key)
        return _fake_results(*scores[key])

    result = coordinate_search({"seed": 0}, knobs, evaluate, log=lambda _: None)
    assert result.chosen == {"a": 1, "b": 2}
    assert result.score == 80.0
    assert evaluated == [(0, 0), (1, 0), (2, 0), (1, 1), (1, 2)]  # (1, 0) is not run twice
    assert [t["validation_score"] for t in result.trail] == [70.0, 75.0, 75.0, 74.0, 80.0]


def test_the_blended_criterion_chooses_on_the_blends_validation_score_alone():
    """Each candidate's head alone, its blend with the encoder's head and the report part disagree; the
    blended criterion follows the blend's validation score and nothing else."""
    scores = {  # (a,) -> (tuned validation, blended validation, blended report)
        (0,): (70.0, 60.0, 99.0),
        (1,): (90.0, 59.0, 99.0),  # the best head alone, a worse blend
        (2,): (50.0, 61.0, 1.0),  # the worst head alone, the best blend on validation, the worst on report
    }
    knobs = [Knob("a", ({}, {"a": 1}, {"a": 2}))]

    def evaluate(values):
        tuned, blended, report = scores[(values.get("a", 0),)]
        blend = {"validation": {"acc": {"overall": blended}}, "report": {"acc": {"overall": report}}}
        return _fake_results(tuned, report) | {"blended": blend}

    tuned = coordinate_search({}, knobs, evaluate, log=lambda _: None)
    blended = coordinate_search({}, knobs, evaluate, criterion="blended", log=lambda _: None)
    assert (tuned.chosen, tuned.score) == ({"a": 1}, 90.0)
    assert (blended.chosen, blended.score) == ({"a": 2}, 61.0)
    assert [t["validation_score"] for t in blended.trail] == [60.0, 59.0, 61.0]


def test_the_blended_criterion_refuses_runs_without_a_blend():
    with pytest.raises(ValueError, match="encoder's head"):
        coordinate_search({}, [Knob("a", ({},))], lambda values: _fake_results(70.0, 90.0), criterion="blended", log=lambda _: None)


def test_merged_sets_nested_keys_without_touching_its_inputs():
    base = {"generation": {"count_rule": "balanced", "ratio": 0.2}, "seed": 0}
    result = merged(base, {"generation": {"ratio": 0.5}}, {"seed": 3})
    assert result == {"generation": {"count_rule": "balanced", "ratio": 0.5}, "seed": 3}
    assert base == {"generation": {"count_rule": "balanced", "ratio": 0.2}, "seed": 0}


@pytest.mark.slow
def test_a_search_with_the_report_labels_shuffled_makes_the_same_choices(tmp_path, digits_encoder):
    """Real runs (the class Gaussian on long-tailed digits): permuting the report part's labels
    changes every report number and no choice."""
    knobs = [
        Knob("training set", ({}, {"generation": {"count_rule": "uniform", "include_real": False}})),
        Knob("temperature", ({}, {"generation": {"temperature": 0.5}}, {"generation": {"temperature": 2.0}})),
    ]
    base = {
        "method": "gaussian",
        "data": {"dataset": "digits"},
        "encoder": {"checkpoint": digits_encoder},
        "classifier": {"epochs": 30},
        "generation": {"count_rule": "balanced"},
        "evaluation": {"controls": False},
    }

    def search(shuffled: bool):
        count = iter(range(100))

        def evaluate(values):
            values = merged(values, {"name": f"c{next(count)}", "evaluation": {"shuffle_report_labels": shuffled}})
            return execute(Run.create(tmp_path / f"{'shuffled' if shuffled else 'true'}-{values['name']}", config_from_dict(values)))

        return coordinate_search(base, knobs, evaluate, log=lambda _: None)

    true, shuffled = search(False), search(True)
    assert shuffled.chosen == true.chosen
    assert [t["validation_score"] for t in shuffled.trail] == [t["validation_score"] for t in true.trail]
    assert shuffled.results["tuned"]["report"]["acc"]["overall"] < true.results["tuned"]["report"]["acc"]["overall"] - 30

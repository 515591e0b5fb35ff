"""Choosing knobs on the validation part of the test set, never on the report part.

A search is a list of knobs, each a few options (config overrides). `coordinate_search` tries
the options of one knob at a time, holding the best choice so far for the others, and keeps an
option only if it beats the current choice on the validation score: by default the overall
accuracy on the validation part with logit adjustment's τ chosen on that same part
(`tuned.validation`); with `criterion="blended"`, that of the head blended with the encoder's head,
(w, τ) chosen on that part (`blended.validation`), for when the blend is what a table reports. The
runs themselves come from a callback, so a benchmark decides where run folders live and which
finished runs to reuse. Nothing here reads `report`: `evaluation.shuffle_report_labels` runs the
same search against permuted report labels and must make every choice the same (a test does).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Criterion = Literal["tuned", "blended"]


def validation_score(results: dict, criterion: Criterion = "tuned") -> float:
    """What a search maximises: the validation part's overall accuracy at the τ chosen on it, of the
    head alone (`tuned`) or of the head blended with the encoder's, (w, τ) chosen on it (`blended`)."""
    if criterion == "blended" and "blended" not in results:
        raise ValueError("criterion 'blended' needs runs with the encoder's head (a non-private run of a shipped encoder)")
    return float(results[criterion]["validation"]["acc"]["overall"])


def merged(base: dict, *overrides: dict) -> dict:
    """`base` with every override's nested keys set (later overrides win); nothing is modified."""
    result = copy.deepcopy(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


@dataclass(frozen=True)
class Knob:
    """A named choice among config overrides; the first option is the default the search starts from."""

    name: str
    options: tuple[dict, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"knob {self.name!r} has no options")


@dataclass
class SearchResult:
    """The chosen overrides (one per knob, merged), the chosen run's results and validation score
    under the search's criterion, and every candidate tried, in order, with its score."""

    chosen: dict
    results: dict
    score: float
    trail: list[dict] = field(default_factory=list)


def key_of(overrides: dict) -> str:
    """A stable text key of a set of overrides (for naming runs and finding repeats)."""
    return json.dumps(overrides, sort_keys=True, separators=(",", ":"))


def coordinate_search(
    base: dict,
    knobs: Sequence[Knob],
    evaluate: Callable[[dict], dict],
    *,
    criterion: Criterion = "tuned",
    log: Callable[[str], Any] = print,
) -> SearchResult:
    """Choose each knob in turn on the validation score, starting from every knob's first option.

    `evaluate(values)` runs the config `values` (a plain dict) and returns its results.json; a
    candidate equal to one already run is not run again. An option replaces the current choice
    only if it scores strictly higher, so a tie keeps the earlier (default-side) option.
    """
    choice = [0] * len(knobs)
    seen: dict[str, dict] = {}
    trail: list[dict] = []

    def score(results: dict) -> float:
        return validation_score(results, criterion)

    def overrides_of(indices: list[int]) -> dict:
        return merged({}, *(knob.options[i] for knob, i in zip(knobs, indices, strict=True)))

    def run(indices: list[int]) -> dict:
        overrides = overrides_of(indices)
        key = key_of(overrides)
        if key not in seen:
            seen[key] = evaluate(merged(base, overrides))
            trail.append({"overrides": overrides, "validation_score": score(seen[key])})
            log(f"  {key}: validation {score(seen[key]):.2f}")
        return seen[key]

    best = run(choice)
    for k, knob in enumerate(knobs):
        for option in range(len(knob.options)):
            if option == choice[k]:
                continue
            candidate = [*choice[:k], option, *choice[k + 1 :]]
            results = run(candidate)
            if score(results) > score(best):
                choice, best = candidate, results
        log(f"{knob.name}: option {choice[k]} ({key_of(knob.options[choice[k]])}), validation {score(best):.2f}")
    return SearchResult(overrides_of(choice), best, score(best), trail)

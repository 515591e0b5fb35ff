"""`ldmlr_dp`: LDMLR with a differentially private denoiser, trained in dp-promise's two phases
(`featdiff.privacy`), and a release of a fixed number of pseudo-features per class.

Reported: the classifier retrained on real + DP pseudo-features (the LDMLR use: the classifier
itself saw the private features, so only the denoiser and the pseudo-features are private), and
as controls `fc_retrain`, non-private `ldmlr` from the same run (`privacy.ldmlr_control`), and
`dp_pseudo_only`, a classifier trained on the released pseudo-features alone (randomly
initialised), which is as private as the release. `privacy` in results.json is the ledger: mechanism, (ε, δ) under both
accountants, steps and sampling rates per phase, σ, C, R, S, K, where the noise came from, and
exactly which files and result rows the guarantee covers. The non-private control's denoiser and
pseudo-features live apart, in `control/`, so they cannot be mistaken for the release.

This package is the method's module (`featdiff.method_catalog`): its rules, its preflight and its
entry point, importing no torch until the method runs (`method` holds the stages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featdiff.config import RunConfig, privacy_rules

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

rules = privacy_rules
FEATURES_ONLY = True
PRIVATE = True
"""A private method: the privacy section's rules apply."""


def preflight(config: RunConfig) -> None:
    """Refuse a budget the config cannot meet before anything is written."""
    from featdiff.methods.ldmlr_dp.method import plan_for_config

    plan_for_config(config)


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.ldmlr_dp.method import run as run_private

    return run_private(context)

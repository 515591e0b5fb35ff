"""`e2e`: end-to-end training of encoder E, classifier G and feature denoiser ε_θ.

One iteration on a batch (x, y): the real branch CE(G(E(x)), y); the diffusion branch L_LDM on
E's (standardised, by default detached) features plus semantic terms on the one-step estimate
z̃₀; the generation branch CE(G(ẑ₀), y) on a few-step DDIM sample drawn afresh. `steps` holds the
iteration functions and the table of which parameters each term updates, `strategies` the three
schedules (A synchronous, B alternating, C progressive), `trainer` the loop, `method` the stages.

This package is the method's module (`featdiff.method_catalog`): its rules and its entry point,
importing no torch until the method runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featdiff.config import RunConfig, config_rule

if TYPE_CHECKING:
    from featdiff.methods.stages import MethodContext, MethodResult

TRAINS_ENCODER = True


def rules(config: RunConfig) -> None:
    """e2e standardises features with running statistics (a fixed [0, 1] map cannot follow an
    encoder that moves), and describes classes by EMA prototypes and covariances (the largest
    distance of a moving encoder's features is not tracked)."""
    if config.diffusion.resolved_scaling() == "unit_interval":
        config_rule(
            config.diffusion.scaling is not None,
            "diffusion.faithful",
            "presets scaling 'unit_interval', which method e2e cannot use (it standardises features with running "
            "statistics); set diffusion.scaling: standardize, or faithful: false",
        )
        config_rule(
            False,
            "diffusion.scaling",
            "must be 'standardize' for method e2e (it standardises features with running statistics), got 'unit_interval'",
        )
    if config.filter.enabled:
        config_rule(
            config.filter.radius == "rms", "filter.radius", "must be 'rms' for method e2e (radii come from EMA covariances), got 'max'"
        )


def run(context: MethodContext) -> MethodResult:
    from featdiff.methods.e2e.method import run as run_end_to_end

    return run_end_to_end(context)

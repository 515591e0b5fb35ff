"""featdiff: long-tailed recognition with diffusion models in feature space.

The library's entry points (`featdiff.fit`, `featdiff.controls`, …, from `featdiff.api`) are
imported on first use, so `import featdiff` stays light (the CLI checks a config before torch
is imported).
"""

__version__ = "0.1.0"

API = ("Generator", "controls", "evaluate", "fit", "open_features", "train_head")


def __getattr__(name: str):
    if name in API:
        from featdiff import api

        return getattr(api, name)
    raise AttributeError(f"module 'featdiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])

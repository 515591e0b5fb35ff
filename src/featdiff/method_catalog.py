"""Every method by the name a config gives it, found without importing torch.

A method is one module: `featdiff/methods/<name>.py` (or a package `featdiff/methods/<name>/`),
named after the method, or a module of your own listed in the environment variable
`FEATDIFF_METHODS` (comma-separated dotted module paths; the method's name is the module's last
part). The names come from the package's file listing and that variable, so listing them imports
nothing; a method's module is imported only when a config names it (for its rules) or a run
executes it. Its top level must therefore import no torch: `run` imports what it needs.

What a method module defines:

- `run(context: MethodContext) -> MethodResult` (required): the method's stages;
- `rules(config: RunConfig) -> None` (optional): the config rules of this method, checked when
  the config is loaded (raise with `featdiff.config.config_rule`, naming the dotted key);
- `preflight(config: RunConfig) -> None` (optional): checks that need the data but no training,
  run before a run folder exists (raise UserError);
- `TRAINS_ENCODER = True` (optional): the method trains the encoder itself, so
  `finetune.init: scratch` may start it from random weights instead of a stage-1 encoder;
- `FEATURES_ONLY = True` (optional): the method needs feature vectors only (no images, no
  encoder), so it runs on `data.source: features`;
- `PRIVATE = True` (optional): the method releases something under a DP guarantee, whose noise
  each process draws for itself, so it runs in one process (not under torchrun).

This module sits below `featdiff.config` (which asks it for the names and the rules) and imports
the methods by name only, so no import points up the layers.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featdiff.errors import UserError

if TYPE_CHECKING:
    from featdiff.config import RunConfig
    from featdiff.methods.stages import MethodContext, MethodResult

PACKAGE = "featdiff.methods"
EXTRA_METHODS = "FEATDIFF_METHODS"
"""Environment variable: extra method modules (e.g. `mylab.methods.ldmlr_mixup,mylab.ablation`)."""
SHARED = frozenset({"stages"})
"""Modules of the package that hold code several methods share: not methods."""


@dataclass(frozen=True)
class Method:
    """A method as its module declares it (see the module docstring)."""

    name: str
    run: Callable[[MethodContext], MethodResult]
    rules: Callable[[RunConfig], None] | None = None
    preflight: Callable[[RunConfig], None] | None = None
    trains_encoder: bool = False
    features_only: bool = False
    private: bool = False


def _extra_modules() -> list[str]:
    listed = [part.strip() for part in os.environ.get(EXTRA_METHODS, "").split(",") if part.strip()]
    for path in listed:
        if not all(part.isidentifier() for part in path.split(".")):
            raise UserError(f"{EXTRA_METHODS} lists {path!r}, which is not a dotted module path (e.g. mylab.methods.mine)")
    return listed


def method_modules() -> dict[str, str]:
    """Every method's name and the module that defines it, without importing any method:
    featdiff's own (alphabetically), then those `FEATDIFF_METHODS` lists."""
    package = importlib.util.find_spec(PACKAGE)
    assert package is not None and package.submodule_search_locations is not None
    found = sorted(info.name for info in pkgutil.iter_modules(package.submodule_search_locations))
    modules = {name: f"{PACKAGE}.{name}" for name in found if name not in SHARED and not name.startswith("_")}
    for path in _extra_modules():
        name = path.rpartition(".")[2]
        if name in modules:
            raise UserError(f"{EXTRA_METHODS} lists {path}, but method {name!r} is already {modules[name]}; rename your module")
        modules[name] = path
    return modules


def method_names() -> list[str]:
    return list(method_modules())


def method_named(name: str) -> Method:
    """The method a config names, its module imported (featdiff's own import no torch)."""
    modules = method_modules()
    if name not in modules:
        raise UserError(f"unknown method {name!r}: use one of {', '.join(modules)}")
    path = modules[name]
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as error:
        if error.name is None or not (path == error.name or path.startswith(error.name + ".")):
            raise  # a module the method imports is missing: a bug in the method, with its traceback
        missing = f"no module {error.name!r}"
        raise UserError(f"{EXTRA_METHODS} lists {path}, which cannot be imported ({missing}); check it and PYTHONPATH") from None
    run = getattr(module, "run", None)
    if not callable(run):
        raise UserError(f"method module {path} defines no run(context) function; every method module defines one (see README)")
    return Method(
        name=name,
        run=run,
        rules=getattr(module, "rules", None),
        preflight=getattr(module, "preflight", None),
        trains_encoder=bool(getattr(module, "TRAINS_ENCODER", False)),
        features_only=bool(getattr(module, "FEATURES_ONLY", False)),
        private=bool(getattr(module, "PRIVATE", False)),
    )

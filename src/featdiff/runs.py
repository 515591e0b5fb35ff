"""A run directory: the resolved config, a metrics log, stage checkpoints and the results.

Runs are never overwritten: a new run refuses an existing folder, and `--resume` continues one from
its last completed stage or its last in-stage checkpoint. Every file is written atomically (temp
file, then rename), so a run killed at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from featdiff.config import RunConfig, dump_config, load_config
from featdiff.errors import UserError

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(path: Path, state: dict[str, Any]) -> None:
    """Training state (optimizer moments, RNG) that safetensors cannot hold; read with weights_only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Run:
    """One run's folder. Stages record completion so a resumed run skips them."""

    def __init__(self, directory: Path, config: RunConfig):
        self.directory = directory
        self.config = config
        self._started = time.perf_counter()

    @classmethod
    def create(cls, directory: Path, config: RunConfig) -> "Run":
        if directory.exists():
            raise UserError(f"output folder {directory} already exists: choose another --out, or continue it with --resume {directory}")
        directory.mkdir(parents=True)
        run = cls(directory, config)
        atomic_write_text(directory / CONFIG_FILE, dump_config(config))
        return run

    @classmethod
    def resume(cls, directory: Path) -> "Run":
        if (directory / RESULTS_FILE).is_file():
            raise UserError(f"run {directory} is already complete ({RESULTS_FILE} exists); start a new one with --out")
        return cls.open(directory)

    @classmethod
    def open(cls, directory: Path) -> "Run":
        """A run folder, finished or not, for reading what its stages left."""
        if not (directory / CONFIG_FILE).is_file():
            raise UserError(f"{directory} is not a featdiff run folder: no {CONFIG_FILE} there; pass the folder a run wrote")
        return cls(directory, load_config(directory / CONFIG_FILE))

    def discard_if_unstarted(self) -> None:
        """Remove a folder this process just created when it failed before finishing any stage."""
        stages = self.directory / "stages"
        if not stages.exists() or not any(stages.iterdir()):
            shutil.rmtree(self.directory)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def path(self, name: str) -> Path:
        return self.directory / name

    def log(self, stage: str, **values: Any) -> None:
        """Append one JSON line to metrics.jsonl (appends are atomic enough for a log)."""
        record = {"stage": stage, "time_s": round(self.elapsed_s, 3), **values}
        with open(self.directory / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def stage_done(self, stage: str) -> bool:
        return (self.directory / "stages" / f"{stage}.done").exists()

    def mark_done(self, stage: str, **info: Any) -> None:
        atomic_write_text(self.directory / "stages" / f"{stage}.done", json.dumps(info))

    def stage_info(self, stage: str) -> dict:
        return json.loads((self.directory / "stages" / f"{stage}.done").read_text())

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        atomic_save_tensors(self.directory / name, tensors)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(self.directory / name)

    def save_checkpoint(self, stage: str, state: dict[str, Any]) -> None:
        atomic_torch_save(self.directory / "checkpoints" / f"{stage}.pt", state)

    def load_checkpoint(self, stage: str) -> dict[str, Any] | None:
        path = self.directory / "checkpoints" / f"{stage}.pt"
        if not path.exists():
            return None
        return torch.load(path, weights_only=True)

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_text(self.directory / RESULTS_FILE, json.dumps(results, indent=2))

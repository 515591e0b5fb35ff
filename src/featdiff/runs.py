"""A run directory: the resolved config, a metrics log, stage checkpoints and the results.

Runs are never overwritten: a new run refuses an existing folder, and `--resume` continues one from
its last completed stage or its last in-stage checkpoint. Every file is written atomically (see
`featdiff.io`), so a run killed at any moment leaves either the old file or the new one, and a
damaged file is a one-line error that says what to delete.

The run's clock spans sessions: `timings.json` keeps the wall time of the earlier sessions and the
per-name totals of `Run.timed` blocks, so a resumed run reports the time all its sessions took.
Once results.json exists the training checkpoints are deleted: nothing can resume a finished run.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch

import featdiff
from featdiff.config import RunConfig, dump_config, load_config
from featdiff.distributed import barrier, world
from featdiff.errors import UserError
from featdiff.io import (
    append_text,
    atomic_save_tensors,
    atomic_torch_save,
    atomic_write_text,
    describe_error,
    load_tensors,
    load_torch_state,
    mapped_tensors,
    strict_json,
)

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
TIMINGS_FILE = "timings.json"
CHECKPOINTS = "checkpoints"

StageOutput = tuple[dict[str, torch.Tensor], dict[str, Any]]
"""What a finished stage leaves: its tensors (one safetensors file) and its info (JSON, in its marker)."""


class Resumable(Protocol):
    """Anything a stage checkpoints part-way (a `TrainState`)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Run:
    """One run's folder. Stages record completion so a resumed run skips them."""

    def __init__(self, directory: Path, config: RunConfig):
        self.directory = directory
        self.config = config
        self.writes = world().main
        """Under torchrun only rank 0 writes the folder; every rank reads it (`featdiff.distributed`)."""
        self._session_started = time.perf_counter()
        self._earlier_s, self._stage_totals = self._read_timings()
        self._open_blocks: dict[str, float] = {}

    @classmethod
    def create(cls, directory: Path, config: RunConfig) -> "Run":
        if directory.exists() or directory.is_symlink():
            raise UserError(f"output folder {directory} already exists: choose another --out, or continue it with --resume {directory}")
        missing = [folder for folder in (directory, *directory.parents) if not (folder.exists() or folder.is_symlink())]
        try:
            directory.mkdir(parents=True)
            atomic_write_text(directory / CONFIG_FILE, dump_config(config))
        except BaseException as error:
            _remove_created(directory, missing)
            if isinstance(error, OSError):
                raise UserError(
                    f"cannot create output folder {directory} ({_creation_problem(directory, error)}): choose another --out"
                ) from error
            raise
        return cls(directory, config)

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

    # The clock, over all sessions of the run.

    @property
    def elapsed_s(self) -> float:
        """Wall time of every earlier session (as last saved) plus this one so far."""
        return self._earlier_s + time.perf_counter() - self._session_started

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Total seconds per `timed` name over all sessions, a block still running included."""
        now = time.perf_counter()
        totals = dict(self._stage_totals)
        for name, started in self._open_blocks.items():
            totals[name] = totals.get(name, 0.0) + now - started
        return totals

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to the run's total for `name` (kept across `--resume`).

        Totals are written with the run's next record of progress (a log line, a checkpoint, a
        finished stage, the results), never on their own: a session that fails on bad input
        before making progress leaves the run folder exactly as it was. A block killed part-way
        keeps the time saved by its last log or checkpoint; when a later session runs it again,
        both sessions' time counts.
        """
        if name in self._open_blocks:
            raise ValueError(f"run.timed({name!r}) is already running")
        self._open_blocks[name] = time.perf_counter()
        try:
            yield
        finally:
            started = self._open_blocks.pop(name)
            self._stage_totals[name] = self._stage_totals.get(name, 0.0) + time.perf_counter() - started

    def _read_timings(self) -> tuple[float, dict[str, float]]:
        path = self.directory / TIMINGS_FILE
        if not path.is_file():
            return 0.0, {}
        try:
            stored = json.loads(path.read_text())
            return float(stored["elapsed_s"]), {str(name): float(seconds) for name, seconds in stored["stage_s"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserError(f"cannot read {path} ({describe_error(error)}): delete it to count this run's time from zero") from error

    def _save_timings(self) -> None:
        if not self.writes or not self.directory.is_dir():  # another rank's, or discarded: never bring the folder back
            return
        timings = {"elapsed_s": self.elapsed_s, "stage_s": self.stage_seconds}
        atomic_write_text(self.directory / TIMINGS_FILE, strict_json(timings, indent=1))

    # What the stages leave.

    def path(self, name: str) -> Path:
        return self.directory / name

    def log(self, stage: str, **values: Any) -> None:
        """Append one JSON line to metrics.jsonl; `time_s` is on the run's clock over all sessions."""
        if not self.writes:
            return
        record = {"stage": stage, "time_s": round(self.elapsed_s, 3), **values}
        append_text(self.directory / "metrics.jsonl", strict_json(record) + "\n")
        self._save_timings()

    def stage_done(self, stage: str) -> bool:
        return (self.directory / "stages" / f"{stage}.done").exists()

    def mark_done(self, stage: str, **info: Any) -> None:
        if not self.writes:
            return
        atomic_write_text(self.directory / "stages" / f"{stage}.done", strict_json(info))
        self._save_timings()

    def stage_info(self, stage: str) -> dict:
        return json.loads((self.directory / "stages" / f"{stage}.done").read_text())

    def stage(self, stage: str, compute: Callable[[], StageOutput], *, file: str | None = None) -> StageOutput:
        """A stage that runs once per run: a finished stage's stored output, or else `compute()`'s,
        stored (tensors in `file`, default `<stage>.safetensors`; info in the stage's marker) and
        only then marked done, so a run killed inside `compute` runs it again on `--resume`.

        Both paths return the tensors and the info, so the caller rebuilds its objects from them
        the same way whether the stage ran now or in an earlier session.
        """
        file = f"{stage}.safetensors" if file is None else file
        barrier()  # under torchrun every rank decides on the same folder
        if self.stage_done(stage):
            return self.load_tensors(file, stage=stage), self.stage_info(stage)
        tensors, info = compute()
        self.save_tensors(file, tensors)
        self.mark_done(stage, **info)
        barrier()
        return tensors, info

    def resume_into(self, stage: str, state: Resumable) -> None:
        """Continue `state` from the stage's last in-stage checkpoint, if one was saved."""
        saved = self.load_checkpoint(stage)
        if saved is not None:
            state.load_state_dict(saved)

    def streamed_stage(self, stage: str, write: Callable[[Path], dict], *, file: str) -> StageOutput:
        """A stage whose output may be too large to hold (a fill of millions of pseudo-features):
        `write(path)` writes `file` itself, atomically (`featdiff.io.StreamedTensorFile`), and
        returns the stage's info; the tensors come back memory-mapped, whether the stage ran now
        or in an earlier session. Only rank 0 writes; under torchrun the others wait and map it."""
        barrier()
        if not self.stage_done(stage):
            if self.writes:
                info = write(self.directory / file)
                self.mark_done(stage, **info)
            barrier()
        return self.map_tensors(file, stage=stage), self.stage_info(stage)

    def map_tensors(self, name: str, stage: str) -> dict[str, torch.Tensor]:
        """A safetensors file of the run, memory-mapped (`featdiff.io.mapped_tensors`)."""
        fix = f"delete it and {self.directory / 'stages' / f'{stage}.done'}, then continue the run with --resume {self.directory}"
        return mapped_tensors(self.directory / name, fix)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        if not self.writes:
            return
        atomic_save_tensors(self.directory / name, tensors)

    def load_tensors(self, name: str, stage: str | None = None) -> dict[str, torch.Tensor]:
        """A safetensors file of the run; `stage`, the stage that wrote it, makes a damaged file's message exact."""
        marker = (
            self.directory / "stages" / f"{stage}.done" if stage else f"{self.directory / 'stages'}/<stage>.done of the stage that wrote it"
        )
        others = [str(marker)]
        if (self.directory / RESULTS_FILE).exists():
            others.append(str(self.directory / RESULTS_FILE))
        fix = f"delete it and {' and '.join(others)}, then continue the run with --resume {self.directory}"
        return load_tensors(self.directory / name, fix)

    def save_checkpoint(self, stage: str, state: dict[str, Any]) -> None:
        if not self.writes:
            return
        atomic_torch_save(self.directory / CHECKPOINTS / f"{stage}.pt", state)
        self._save_timings()

    def load_checkpoint(self, stage: str) -> dict[str, Any] | None:
        path = self.directory / CHECKPOINTS / f"{stage}.pt"
        if not path.exists():
            return None
        fix = f"delete it to restart the {stage} stage from its beginning, then continue with --resume {self.directory}"
        return load_torch_state(path, fix)

    def write_results(self, results: dict[str, Any]) -> None:
        """results.json, with the versions that made it (`software`), then (never before) the training
        checkpoints go: a finished run cannot resume."""
        if not self.writes:
            return
        self._save_timings()
        atomic_write_text(self.directory / RESULTS_FILE, strict_json(results | {"software": software_versions()}, indent=2))
        shutil.rmtree(self.directory / CHECKPOINTS, ignore_errors=True)


def software_versions() -> dict[str, str]:
    """featdiff's, torch's and Python's versions: what a reader of a run's numbers needs to reproduce them."""
    return {"featdiff": featdiff.__version__, "torch": torch.__version__, "python": platform.python_version()}


def _creation_problem(directory: Path, error: OSError) -> str:
    """Why a folder could not be made: a file where a folder must be, or the system's words."""
    for ancestor in directory.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                return f"{ancestor} is a file, not a folder"
            break
    return error.strerror or describe_error(error)


def _remove_created(directory: Path, created: list[Path]) -> None:
    """Undo a failed `Run.create`: the run folder and any parent it made, deepest first."""
    for folder in created:
        if folder == directory:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty (someone else's now) or never made

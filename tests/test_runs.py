"""The run folder: atomic files with one mode, damaged files as one-line errors, a clock that spans
sessions, and a finished run without its training checkpoints."""

import json
import os
import platform
import shutil
import stat
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from featdiff import io, runs
from featdiff.config import RunConfig
from featdiff.errors import UserError
from featdiff.runs import Run


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Clock:
    """A perf_counter the test moves by hand."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock(100.0)
    monkeypatch.setattr(runs.time, "perf_counter", fake)
    return fake


@pytest.fixture
def run(tmp_path) -> Run:
    return Run.create(tmp_path / "run", RunConfig(name="test"))


# Writing


def test_every_file_gets_mode_0644_whatever_the_umask(tmp_path):
    previous = os.umask(0o077)  # mkstemp's 0600 and a strict umask must both be overridden
    try:
        run = Run.create(tmp_path / "run", RunConfig(name="test"))
        run.log("encoder", epoch=1, loss=0.5)
        run.save_tensors("encoder.safetensors", {"w": torch.ones(3)})
        run.mark_done("encoder")
        io.atomic_write_bytes(tmp_path / "run" / "raw.bin", b"\x00\x01")
        run.save_checkpoint("denoiser", {"step": 1})
        run.write_results({"acc": 1.0})
    finally:
        os.umask(previous)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.yaml", "metrics.jsonl", "encoder.safetensors", "encoder.done", "raw.bin", "timings.json", "results.json"} <= names
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o644 for p in written}


def _write_half_then_fail(temp, *args, **kwargs) -> None:
    with open(temp, "wb") as stream:
        stream.write(b"half")
    raise OSError("disk full")


@pytest.mark.parametrize("writer", ["bytes", "tensors", "torch"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, writer):
    target = tmp_path / "file"
    target.write_bytes(b"old")
    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk full"):
        if writer == "bytes":
            patch.setattr(Path, "write_bytes", lambda self, data: _write_half_then_fail(self))
            io.atomic_write_bytes(target, b"new")
        elif writer == "tensors":
            patch.setattr(io, "save_file", lambda tensors, temp, metadata=None: _write_half_then_fail(temp))
            io.atomic_save_tensors(target, {"w": torch.ones(2)})
        else:
            patch.setattr(io.torch, "save", lambda state, temp: _write_half_then_fail(temp))
            io.atomic_torch_save(target, {"step": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert target.read_bytes() == b"old"


def test_torch_state_round_trips_through_weights_only_loading(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "step": 7, "history": [0.5, 0.25], "generator": torch.Generator().get_state()}
    io.atomic_torch_save(tmp_path / "state.pt", state)
    loaded = io.load_torch_state(tmp_path / "state.pt", "unused")
    assert loaded["step"] == 7 and loaded["history"] == [0.5, 0.25]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and torch.equal(loaded["generator"], state["generator"])


# Damaged files


def test_truncated_checkpoint_names_the_file_and_the_fix(run):
    run.save_checkpoint("denoiser", {"model": {"w": torch.randn(2000)}, "step": 300})
    assert run.load_checkpoint("denoiser")["step"] == 300
    path = run.directory / "checkpoints" / "denoiser.pt"
    truncate(path)
    with pytest.raises(UserError) as error:
        run.load_checkpoint("denoiser")
    message = one_line(error)
    assert str(path) in message and "delete it to restart the denoiser stage from its beginning" in message
    assert f"--resume {run.directory}" in message
    path.unlink()
    assert run.load_checkpoint("denoiser") is None


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_a_user_error(run, damage):
    run.save_checkpoint("encoder", {"model": {"w": torch.randn(500)}, "epoch": 3})
    path = run.directory / "checkpoints" / "encoder.pt"
    if damage == "truncated":
        truncate(path)
    else:
        path.write_bytes(b"" if damage == "empty" else b"not a checkpoint at all")
    with pytest.raises(UserError) as error:
        run.load_checkpoint("encoder")
    assert str(path) in one_line(error)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_truncated_safetensors_names_the_file_and_the_fix(run, damage):
    run.save_tensors("pseudo_features.safetensors", {"features": torch.randn(300, 64), "labels": torch.arange(300)})
    path = run.directory / "pseudo_features.safetensors"
    assert torch.equal(run.load_tensors("pseudo_features.safetensors")["labels"], torch.arange(300))
    if damage == "truncated":
        truncate(path)
    else:
        path.write_bytes(b"")
    with pytest.raises(UserError) as error:
        run.load_tensors("pseudo_features.safetensors", stage="generation")
    message = one_line(error)
    assert str(path) in message and str(run.directory / "stages" / "generation.done") in message
    assert f"--resume {run.directory}" in message
    with pytest.raises(UserError, match="the stage that wrote it"):
        run.load_tensors("pseudo_features.safetensors")


def test_missing_run_tensors_are_a_user_error(run):
    with pytest.raises(UserError) as error:
        run.load_tensors("denoiser.safetensors")
    assert str(run.directory / "denoiser.safetensors") in one_line(error)


def test_create_under_a_regular_file_is_a_user_error_and_creates_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    before = files_of(tmp_path)
    for out in (tmp_path / "notes.txt" / "run", tmp_path / "notes.txt" / "deeper" / "run"):
        with pytest.raises(UserError) as error:
            Run.create(out, RunConfig(name="test"))
        message = one_line(error)
        assert str(tmp_path / "notes.txt") in message and "is a file" in message and "--out" in message
        assert files_of(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_create_that_fails_half_way_removes_the_folders_it_made(tmp_path, monkeypatch):
    def no_space(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs, "atomic_write_text", no_space)
    with pytest.raises(UserError) as error:
        Run.create(tmp_path / "new" / "parent" / "run", RunConfig(name="test"))
    assert "No space left on device" in one_line(error)
    assert list(tmp_path.iterdir()) == []


def test_damaged_timings_file_is_a_user_error(run):
    run.log("encoder", epoch=1)
    (run.directory / "timings.json").write_text('{"elapsed_s": ')
    with pytest.raises(UserError) as error:
        Run.resume(run.directory)
    assert str(run.directory / "timings.json") in one_line(error) and "delete it" in str(error.value)


# The clock over sessions


def test_time_adds_up_over_a_killed_and_resumed_session(tmp_path, clock):
    out, killed = tmp_path / "run", tmp_path / "killed"
    first = Run.create(out, RunConfig(name="test"))  # t = 100
    clock.now = 101.0
    block = first.timed("denoiser_s")
    block.__enter__()
    clock.now = 105.0
    first.log("denoiser", step=100)  # the run's clock: 5 s; the block: 4 s so far
    clock.now = 106.0
    first.save_checkpoint("denoiser", {"step": 100})
    clock.now = 107.0
    shutil.copytree(out, killed)  # killed here, mid-block: what the disk holds is all that survives
    block.__exit__(None, None, None)

    clock.now = 200.0
    second = Run.resume(killed)
    assert second.elapsed_s == pytest.approx(6.0)  # as saved by the last checkpoint
    assert second.stage_seconds == pytest.approx({"denoiser_s": 5.0})
    clock.now = 202.0
    with second.timed("denoiser_s"):
        clock.now = 205.0
        second.log("denoiser", step=200)
        clock.now = 207.0
    with second.timed("classifier_s"):
        clock.now = 210.0
    assert second.stage_seconds == pytest.approx({"denoiser_s": 10.0, "classifier_s": 3.0})
    assert second.elapsed_s == pytest.approx(16.0)
    clock.now = 211.0
    second.write_results({"acc": 1.0})

    times = [json.loads(line)["time_s"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert times == [5.0, 11.0]
    clock.now = 500.0
    reopened = Run.open(killed)
    assert reopened.stage_seconds == pytest.approx({"denoiser_s": 10.0, "classifier_s": 3.0})
    assert reopened.elapsed_s == pytest.approx(17.0)


def test_a_killed_block_keeps_its_time_up_to_its_last_record_of_progress(run, clock):
    clock.now = 150.0
    with pytest.raises(KeyboardInterrupt), run.timed("encoder_s"):
        clock.now = 152.0
        run.log("encoder", epoch=1)
        clock.now = 152.5
        raise KeyboardInterrupt
    assert Run.resume(run.directory).stage_seconds == pytest.approx({"encoder_s": 2.0})


def test_a_session_that_fails_before_any_progress_changes_nothing(run, clock):
    run.mark_done("encoder")
    before = (run.directory / "timings.json").read_bytes()
    resumed = Run.resume(run.directory)
    clock.now += 3.0
    with pytest.raises(UserError), resumed.timed("features_s"):
        raise UserError("a damaged file")
    assert (run.directory / "timings.json").read_bytes() == before


def test_a_name_cannot_be_timed_twice_at_once(run):
    with run.timed("features_s"), pytest.raises(ValueError, match="features_s"), run.timed("features_s"):
        pass


def test_real_clock_sums_two_sessions(tmp_path):
    first = Run.create(tmp_path / "run", RunConfig(name="test"))
    with first.timed("denoiser_s"):
        torch.zeros(1)
    first.mark_done("denoiser")
    one = first.stage_seconds["denoiser_s"]
    second = Run.resume(tmp_path / "run")
    with second.timed("denoiser_s"):
        pass
    assert second.stage_seconds["denoiser_s"] >= one > 0
    assert second.elapsed_s >= json.loads((tmp_path / "run" / "timings.json").read_text())["elapsed_s"]


# What a run folder keeps


def test_results_are_written_before_the_checkpoints_go(run, monkeypatch):
    run.save_checkpoint("classifier", {"epoch": 50})
    real_write = runs.atomic_write_text

    def results_fail(path, text):
        if path.name == "results.json":
            raise OSError(28, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", results_fail)
    with pytest.raises(OSError):
        run.write_results({"acc": 1.0})
    assert (run.directory / "checkpoints" / "classifier.pt").is_file()  # still resumable
    monkeypatch.undo()
    run.write_results({"acc": 1.0})
    written = json.loads((run.directory / "results.json").read_text())
    assert written["acc"] == 1.0
    assert not (run.directory / "checkpoints").exists()
    # what made the numbers, for whoever cites them: the installed distribution's version, not a copy of it
    versions = {"featdiff": metadata.version("featdiff"), "torch": torch.__version__, "python": platform.python_version()}
    assert written["software"] == versions


def test_existing_run_behaviour_is_kept(tmp_path):
    out = tmp_path / "run"
    run = Run.create(out, RunConfig(name="kept", seed=3))
    with pytest.raises(UserError, match="already exists"):
        Run.create(out, RunConfig(name="other"))
    assert Run.open(out).config.name == "kept" and Run.open(out).config.seed == 3
    with pytest.raises(UserError, match="not a featdiff run folder"):
        Run.open(tmp_path)

    assert not run.stage_done("encoder")
    run.mark_done("encoder", history=[1.0, 0.5])
    assert run.stage_done("encoder") and run.stage_info("encoder") == {"history": [1.0, 0.5]}
    run.save_tensors("encoder.safetensors", {"w": torch.arange(3.0)})
    assert torch.equal(load_file(out / "encoder.safetensors")["w"], torch.arange(3.0))
    run.save_checkpoint("classifier", {"epoch": 2})
    assert Run.resume(out).load_checkpoint("classifier") == {"epoch": 2}
    run.write_results({"acc": 1.0})
    with pytest.raises(UserError, match="already complete"):
        Run.resume(out)
    run.discard_if_unstarted()  # a stage finished: kept
    assert out.is_dir()

    fresh = Run.create(tmp_path / "fresh", RunConfig(name="fresh"))
    fresh.log("encoder", epoch=1)
    fresh.discard_if_unstarted()
    assert not (tmp_path / "fresh").exists()
    with fresh.timed("late_s"):  # a discarded run's clock never brings its folder back
        pass
    assert not (tmp_path / "fresh").exists()


def test_non_finite_numbers_are_written_as_strict_json_nulls(tmp_path):
    from featdiff.io import strict_json

    text = strict_json({"eps": float("inf"), "loss": [1.0, float("nan")], "nested": {"low": float("-inf")}})
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"eps": None, "loss": [1.0, None], "nested": {"low": None}}


# A resumable stage


def test_a_stage_computes_once_and_a_later_session_reads_what_it_stored(tmp_path):
    out = tmp_path / "run"
    run = Run.create(out, RunConfig(name="stage"))
    calls = []

    def compute() -> runs.StageOutput:
        calls.append(1)
        return {"w": torch.arange(4.0)}, {"history": [{"loss": 0.5}]}

    tensors, info = run.stage("fit", compute)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and info == {"history": [{"loss": 0.5}]}
    assert torch.equal(load_file(out / "fit.safetensors")["w"], torch.arange(4.0))
    assert run.stage_done("fit") and run.stage_info("fit") == info

    later = Run.resume(out)
    tensors, info = later.stage("fit", compute)
    assert calls == [1], "a finished stage must not run again"
    assert torch.equal(tensors["w"], torch.arange(4.0)) and info == {"history": [{"loss": 0.5}]}
    stored, _ = later.stage("other", lambda: ({"x": torch.ones(2)}, {}), file="named.safetensors")
    assert torch.equal(load_file(out / "named.safetensors")["x"], torch.ones(2)) and torch.equal(stored["x"], torch.ones(2))


def test_a_stage_that_fails_is_neither_stored_nor_marked_and_runs_again(run):
    def fail() -> runs.StageOutput:
        run.save_checkpoint("fit", {"step": 3})
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run.stage("fit", fail)
    assert not run.stage_done("fit") and not (run.directory / "fit.safetensors").exists()

    class State:
        loaded: dict | None = None

        def load_state_dict(self, state: dict) -> None:
            self.loaded = state

    state = State()

    def resume() -> runs.StageOutput:
        run.resume_into("fit", state)
        return {"w": torch.zeros(1)}, {}

    tensors, _ = run.stage("fit", resume)
    assert state.loaded == {"step": 3} and torch.equal(tensors["w"], torch.zeros(1))
    fresh = State()
    run.resume_into("never-checkpointed", fresh)
    assert fresh.loaded is None


def test_a_digits_run_starts_from_the_encoder_of_an_earlier_run(tmp_path, digits_encoder):
    """`encoder.checkpoint` takes the stage-1 encoder of an earlier run on any dataset (for digits
    the digits CNN, as `auto` trains there): no stage 1 runs, and its head scores as in its own run."""
    from featdiff.config import config_from_dict
    from featdiff.pipeline import execute

    config = config_from_dict({"name": "again", "method": "ce", "data": {"dataset": "digits"}, "encoder": {"checkpoint": digits_encoder}})
    results = execute(Run.create(tmp_path / "again", config))
    original = json.loads((Path(digits_encoder).parent / "results.json").read_text())
    assert results["acc"] == original["acc"] and results["per_class"] == original["per_class"]
    trained, loaded = (folder / "metrics.jsonl" for folder in (Path(digits_encoder).parent, tmp_path / "again"))
    assert '"stage": "encoder"' in trained.read_text()
    assert not loaded.exists() or '"stage": "encoder"' not in loaded.read_text()

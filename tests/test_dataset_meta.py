"""The dataset's meta.json read in one place (a damaged one is one line with the fix, from every
reader), and the clean-up after a write killed while it replaced a dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents.loading import load_teacher
from policy_distill.collect import CollectConfig, collect, existing_dataset_matches
from policy_distill.dataset import (
    load_dataset,
    read_meta,
    recorded_content_sha256,
    remove_stale_dataset_temporaries,
)
from policy_distill.errors import UserError
from policy_distill.experiments import sweep, tune
from policy_distill.resources import check_memory


def _dead_pid() -> int:
    """The id of a process that has exited (a killed writer's)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


@pytest.fixture
def dataset(tiny: Path, tmp_path: Path) -> Path:
    """A copy of the tiny recording, free to damage."""
    return Path(shutil.copytree(tiny / "data", tmp_path / "pong"))


READERS: dict[str, Callable[[Path], object]] = {
    "load_dataset": load_dataset,
    "read_meta": read_meta,
    "recorded_content_sha256": recorded_content_sha256,
    "collect's reuse check": lambda d: existing_dataset_matches(d, {"game": "pong"}),
    "check_memory": lambda d: check_memory(SimpleNamespace(data_dir=Path(d), frames=400), None),
    "sweep's provenance check": lambda d: sweep._check_provenance(
        SimpleNamespace(data=str(d), results="results.jsonl"), "pong", None, []
    ),
    "tune's provenance check": lambda d: tune.Runner._check_provenance(
        SimpleNamespace(cfg=SimpleNamespace(path=Path, data=str(d)), rows={}, run=True)
    ),
}

DAMAGE = {
    "truncated": b'{"format": "policy-distill/dataset", "fram',
    "binary": bytes(range(256)),
    "empty": b"",
    "a list": b"[1, 2]",
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("reader", READERS)
def test_a_damaged_meta_json_is_one_line_naming_the_file_and_the_fix(dataset: Path, reader, damage) -> None:
    (dataset / "meta.json").write_bytes(DAMAGE[damage])
    with pytest.raises(UserError) as caught:
        READERS[reader](dataset)
    message = str(caught.value)
    assert "\n" not in message
    assert str(dataset / "meta.json") in message
    not_json = "is corrupted (not JSON text)"
    assert ("is not a JSON object (it holds a list)" if damage == "a list" else not_json) in message
    assert "overwrite" in message  # record it again (`collect ... --overwrite`, or collect's own `overwrite`)


def test_recorded_content_sha256_of_a_valid_dataset_and_of_none(dataset: Path, tmp_path: Path) -> None:
    assert recorded_content_sha256(dataset) == load_dataset(dataset).meta["content_sha256"]
    assert len(recorded_content_sha256(dataset) or "") == 64
    assert recorded_content_sha256(tmp_path / "nothing") is None
    assert read_meta(dataset) == load_dataset(dataset, verify=False).meta


def _killed_write(tiny: Path, out: Path, *, tmp_complete: bool = True) -> tuple[Path, Path]:
    """What a write killed between its two renames leaves: no ``out``, the finished new recording
    in ``.<name>.tmp-<pid>`` and the replaced dataset in ``.<name>.old-<pid>``, of a dead pid."""
    pid = _dead_pid()
    new = Path(shutil.copytree(tiny / "data", out.parent / f".{out.name}.tmp-{pid}"))
    old = Path(shutil.copytree(tiny / "data", out.parent / f".{out.name}.old-{pid}"))
    (new / "which").write_text("new")
    (old / "which").write_text("old")
    if not tmp_complete:
        (new / "meta.json").unlink()  # written last: killed before it
    return new, old


def test_clean_up_puts_the_finished_recording_of_a_killed_write_in_place(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "pong"
    new, old = _killed_write(tiny, out)
    assert remove_stale_dataset_temporaries(out) == [old]
    assert (out / "which").read_text() == "new"
    assert not new.exists() and not old.exists()
    load_dataset(out)  # whole, its content hash intact
    printed = capsys.readouterr().out
    assert f"restored {out} from {new}" in printed
    assert f"removed {old}" in printed


def test_clean_up_puts_the_old_dataset_back_when_the_new_one_is_unfinished(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "pong"
    new, old = _killed_write(tiny, out, tmp_complete=False)
    assert remove_stale_dataset_temporaries(out) == [new]
    assert (out / "which").read_text() == "old"
    assert not new.exists() and not old.exists()
    assert f"restored {out} from {old}" in capsys.readouterr().out


def test_clean_up_keeps_a_dataset_in_place_and_deletes_both_temporaries(tiny, tmp_path) -> None:
    out = Path(shutil.copytree(tiny / "data", tmp_path / "pong"))
    new, old = _killed_write(tiny, out)
    assert sorted(remove_stale_dataset_temporaries(out)) == sorted([new, old])
    assert not (out / "which").exists()


def test_collect_reuses_the_recording_a_killed_write_had_finished(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "pong"
    _killed_write(tiny, out)
    meta = collect(
        load_teacher(tiny / "teacher.pt"),
        CollectConfig(frames=400, num_envs=4, batch_size=2),  # the arguments that recorded it
        out,
        progress=False,
    )
    assert "reusing the complete dataset" in capsys.readouterr().out
    assert (out / "which").read_text() == "new"
    assert meta["content_sha256"] == recorded_content_sha256(tiny / "data")


def test_collect_records_over_a_restored_recording_made_with_other_arguments(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "pong"
    _killed_write(tiny, out)  # recorded with frames=400
    meta = collect(
        load_teacher(tiny / "teacher.pt"), CollectConfig(frames=200, num_envs=4), out, progress=False
    )
    printed = capsys.readouterr().out
    assert "not reusing the restored" in printed and "other arguments" in printed
    assert meta["frames"] == 200 and read_meta(out)["frames"] == 200
    assert not (out / "which").exists()


def test_a_damaged_leftover_does_not_stop_the_clean_up(tiny, tmp_path) -> None:
    out = tmp_path / "pong"
    new, old = _killed_write(tiny, out)
    meta = json.loads((new / "meta.json").read_text())
    (new / "meta.json").write_text(json.dumps({**meta, "settings": {"game": 7}}))  # not a game name
    with pytest.raises(UserError, match="unusable settings record"):
        read_meta(new)  # one line, not an AttributeError
    assert remove_stale_dataset_temporaries(out) == [new]
    assert (out / "which").read_text() == "old"

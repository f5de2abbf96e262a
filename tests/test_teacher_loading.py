"""load_teacher: shipped names, paths, and refusals with one-line errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from agents.loading import load_teacher
from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, "errors must be one line"
    return message


def test_shipped_pong_teacher_loads_frozen_with_its_settings() -> None:
    teacher = load_teacher("pong")
    assert teacher.settings.game == "pong" and teacher.num_actions == 6
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    x = torch.rand(3, 4, 84, 84)
    logp = teacher.log_probs(x)
    assert logp.shape == (3, 6) and logp.dtype == torch.float32
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(3))
    assert len(teacher.source.sha256) == 64 and teacher.source.kind == "policy-distill"


def test_wrong_game_is_refused(make_teacher_file) -> None:
    path = make_teacher_file(EnvSettings("pong"))
    with pytest.raises(UserError) as err:
        load_teacher(path, game="breakout")
    assert "plays pong, not breakout" in _one_line(err)


def test_settings_mismatch_is_refused(make_teacher_file) -> None:
    path = make_teacher_file(EnvSettings("pong"))
    with pytest.raises(UserError) as err:
        load_teacher(path, settings=EnvSettings("pong", frameskip=3))
    assert "frameskip: 4 != 3" in _one_line(err)


def test_truncated_file_is_refused(make_teacher_file, tmp_path) -> None:
    data = make_teacher_file().read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as err:
        load_teacher(cut)
    assert "truncated or corrupted" in _one_line(err)


class Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("owned",))


def test_pickled_payload_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "policy-distill/teacher", "state_dict": Payload()}, path)
    with pytest.raises(UserError) as err:
        load_teacher(path)
    assert "pickled Python objects" in _one_line(err)
    assert "owned" not in capsys.readouterr().out


def test_plain_pickle_file_is_refused(tmp_path) -> None:
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError) as err:
        load_teacher(path)
    _one_line(err)


def test_foreign_checkpoint_is_refused(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "policy-distill/student"}, path)
    with pytest.raises(UserError) as err:
        load_teacher(path)
    assert "not a teacher checkpoint" in _one_line(err)


def test_unknown_name_and_missing_path(tmp_path) -> None:
    with pytest.raises(UserError, match="no shipped teacher"):
        load_teacher("tetris")
    with pytest.raises(UserError, match="does not exist"):
        load_teacher(tmp_path / "nope.pt")

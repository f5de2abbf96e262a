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


def _drop_head(record: dict) -> None:
    del record["state_dict"]["policy_head.weight"]


def _shrink_head(record: dict) -> None:
    record["state_dict"]["policy_head.weight"] = record["state_dict"]["policy_head.weight"][:4]


def _extra_key(record: dict) -> None:
    record["state_dict"]["extra.weight"] = torch.zeros(1)


# name: (spoil of a valid record, expected text); each once crashed some reader of the format
SPOILED_TEACHERS = {
    "no policy_head.weight": (_drop_head, "has no policy_head.weight"),
    "no settings": (lambda r: r.pop("settings"), "lacks its settings record"),
    "settings not a dict": (lambda r: r.update(settings=[1, 2]), "lacks its settings record"),
    "foreign settings field": (lambda r: r["settings"].update(colour=1), "has a bad settings record"),
    "game not a name": (lambda r: r["settings"].update(game=7), "has a bad settings record"),
    "stack a string": (lambda r: r["settings"].update(stack="4"), "has a bad settings record"),
    "stack a float": (lambda r: r["settings"].update(stack=4.0), "has a bad settings record"),
    "negative stack": (lambda r: r["settings"].update(stack=-1), "has a bad settings record"),
    "no state_dict": (lambda r: r.pop("state_dict"), "lacks its weights"),
    "weights not tensors": (lambda r: r["state_dict"].update({"conv.0.weight": 1.0}), "lacks its weights"),
    "no num_actions": (lambda r: r.pop("num_actions"), "records no number of actions"),
    "fewer actions in the head": (_shrink_head, "has 4 actions but pong has 6"),
    "weights of another network": (_extra_key, "does not fit the teacher network"),
}


def spoil_teacher(path, spoil) -> None:
    """Rewrite a teacher checkpoint with ``spoil`` applied to its record."""
    record = torch.load(path, weights_only=True)
    spoil(record)
    torch.save(record, path)


@pytest.mark.parametrize("case", sorted(SPOILED_TEACHERS))
def test_malformed_teacher_file_is_one_line_naming_the_file(make_teacher_file, case) -> None:
    from agents.teacher_file import read_teacher

    spoil, expected = SPOILED_TEACHERS[case]
    path = make_teacher_file()
    spoil_teacher(path, spoil)
    for read in (load_teacher, read_teacher):
        with pytest.raises(UserError) as err:
            read(path)
        message = _one_line(err)
        assert expected in message and str(path) in message, message


def test_the_model_card_reads_the_teacher_through_the_same_checks(make_teacher_file) -> None:
    from agents.model_card import write_model_card
    from policy_distill.evaluation import Scores

    path = make_teacher_file()
    spoil_teacher(path, _drop_head)
    with pytest.raises(UserError) as err:
        write_model_card(path, Scores("pong", [1.0], [10]), seed=0, command="c")
    assert "has no policy_head.weight" in _one_line(err)
    assert not path.with_suffix(".md").exists()


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"hyperparameters": [1, 2]}, "records malformed hyperparameters"),
        ({"hyperparameters": {"total_steps": "10M"}}, "records a malformed total_steps"),
        ({"agent_steps": "many"}, "records a malformed agent_steps"),
        ({"segments": [{"to_step": 32, "wall_time_s": 1.0}]}, "records a malformed record of machines"),
        ({"curve": [[50_000, 1.0]]}, "records a malformed learning curve"),
    ],
    ids=["hyperparameters a list", "total_steps a string", "steps a string", "no from_step", "short point"],
)
def test_the_model_card_refuses_a_malformed_training_record(make_teacher_file, training, expected) -> None:
    from agents.model_card import write_model_card
    from policy_distill.evaluation import Scores

    path = make_teacher_file()
    spoil_teacher(path, lambda r: r.update(training=training))
    with pytest.raises(UserError) as err:
        write_model_card(path, Scores("pong", [1.0], [10]), seed=0, command="c")
    message = _one_line(err)
    assert expected in message and str(path) in message, message
    assert not path.with_suffix(".md").exists()


def test_the_learning_curve_is_written_atomically(tmp_path, monkeypatch) -> None:
    """The PNG goes through the atomic writer: no fixed ``.tmp.png`` beside it, none left on failure."""
    pytest.importorskip("matplotlib")
    from agents import model_card

    png = tmp_path / "pong_curve.png"
    assert model_card.plot_learning_curve([[50_000, 1.0, 3], [100_000, 2.0, 4]], "pong", png) == png
    assert png.read_bytes().startswith(b"\x89PNG") and sorted(tmp_path.iterdir()) == [png]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("policy_distill.checkpoint.os.replace", full_disk)
    with pytest.raises(OSError):
        model_card.plot_learning_curve([[50_000, 5.0, 1]], "pong", tmp_path / "other.png")
    assert sorted(tmp_path.iterdir()) == [png]

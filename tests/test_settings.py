import pytest

from policy_distill.errors import UserError
from policy_distill.settings import EnvSettings, game_info, human_normalized


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("pong", "pong"),
        ("Pong", "pong"),
        ("spaceinvaders", "space_invaders"),
        ("SpaceInvaders", "space_invaders"),
        ("space-invaders", "space_invaders"),
        ("ALE/Breakout-v5", "breakout"),
        ("BreakoutNoFrameskip-v4", "breakout"),
    ],
)
def test_game_names_as_users_type_them(typed: str, canonical: str) -> None:
    assert game_info(typed).name == canonical


def test_unknown_game_lists_known_ones() -> None:
    with pytest.raises(UserError) as err:
        game_info("pongg")
    message = str(err.value)
    assert "\n" not in message
    assert "breakout" in message and "pong" in message and "space_invaders" in message


def test_action_counts_are_minimal_sets() -> None:
    assert [game_info(g).num_actions for g in ("pong", "breakout", "space_invaders")] == [6, 4, 6]


def test_human_normalisation() -> None:
    assert human_normalized("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("pong", -20.7) == pytest.approx(0.0)


def test_settings_roundtrip_and_mismatch_message() -> None:
    a = EnvSettings("pong")
    assert EnvSettings.from_dict(a.to_dict()) == a
    b = EnvSettings("pong", sticky_action_prob=0.25)
    with pytest.raises(UserError, match="sticky_action_prob: 0.0 != 0.25"):
        a.check_matches(b, mine="teacher", theirs="dataset")
    # Reward clipping only changes what a learner trains on, never what a policy sees.
    a.check_matches(EnvSettings("pong", clip_rewards=False), mine="teacher", theirs="dataset")


def test_foreign_settings_record_is_refused() -> None:
    with pytest.raises(UserError, match="unexpected fields"):
        EnvSettings.from_dict({"game": "pong", "colour": True})

"""The sweep's executor settings, checked before any work, with or without Ray installed."""

from __future__ import annotations

import sys

import pytest

from policy_distill.errors import ConfigError, UserError
from policy_distill.experiments.sweep import reproduce


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"executor": "dask"}, "executor must be one of local, ray"),
        ({"address": "head:6379"}, "address is only used with executor ray"),
        ({"executor": "ray", "cpus_per_cell": 0}, "cpus_per_cell must lie in"),
        ({"executor": "ray", "cell_retries": -1}, "cell_retries must be at least 0"),
    ],
)
def test_executor_settings_are_checked(tiny_sweep_config, tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_sweep_config(tmp_path, **overrides)


def test_ray_executor_without_ray_says_how_to_install_it(
    tiny_sweep_config, write_hparams, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    write_hparams(tmp_path / "hparams.json")
    with pytest.raises(UserError, match=r"pip install 'policy-distill\[ray\]'"):
        reproduce(tiny_sweep_config(tmp_path, executor="ray"))
    assert not (tmp_path / "results.jsonl").exists()

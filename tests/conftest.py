"""Shared fixtures: a private project folder for the session and a tiny trial on tiny built-in data."""

from __future__ import annotations

import os

import pytest

# Every Ray runtime the tests start (in this process or in the `frost` processes it spawns) listens on
# 127.0.0.1 only; Ray reads this once, on import (service/cluster/loopback.py says why).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from tiny_trial import TINY_TRIAL  # noqa: E402  (after the Ray setting above)

from trainers.config import TrialSpec, load_trial_spec


@pytest.fixture(scope="session", autouse=True)
def frost_home(tmp_path_factory):
    """Nothing a test runs writes into ./frost-runs, and nothing tries to download weights."""
    home = tmp_path_factory.mktemp("frost-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FROST_HOME", str(home))
        patch.setenv("FROST_OFFLINE", "1")
        yield home


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY_TRIAL)


@pytest.fixture
def tiny_trial() -> TrialSpec:
    return load_trial_spec(None, TINY_TRIAL)

"""How the worker sizes its ONNX Runtime session: threads and memory arena."""

from __future__ import annotations

import os

import pytest

from cosmicai.constants import ENV_ORT_ARENA, ENV_ORT_THREADS
from cosmicai.exceptions import ModelError
from cosmicai.model import RedshiftModel, available_cpus, default_arena, default_threads
from harness.onnx_models import linear_model


def test_threads_default_to_the_cpus_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_ORT_THREADS, raising=False)
    assert default_threads() == available_cpus()
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_threads_from_the_environment_and_from_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_ORT_THREADS, "3")
    assert RedshiftModel(linear_model()).threads == 3
    assert RedshiftModel(linear_model(), threads=2).threads == 2


def test_bad_thread_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ORT_THREADS, "many")
    with pytest.raises(
        ModelError, match=r"COSMICAI_ORT_THREADS must be a whole number, not 'many'"
    ):
        default_threads()


def test_arena_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ORT_ARENA, raising=False)
    assert default_arena() is True
    monkeypatch.setenv(ENV_ORT_ARENA, "0")
    assert default_arena() is False


def test_fp32_astromae_missing_from_a_layer_points_to_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    from cosmicai import model

    monkeypatch.setattr(model, "builtin_models", lambda: {})
    with pytest.raises(ModelError, match=r"left out of the Lambda layer .* s3://"):
        model.load_model_bytes("builtin:astromae")

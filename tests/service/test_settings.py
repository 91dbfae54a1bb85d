"""Settings as data, the one loader, and the served-model core's merge: the model entry, then its
``model-config.yaml``, then the server's defaults, where a 0 or ``false`` is a value, not unset.
Both backends build their models through the same core, so they agree. No model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.backends.embedded import EmbeddedBackend
from service.cli import FLAGS, _parser
from service.loader import load_settings
from service.metrics import Metrics
from service.settings import Settings
from service.torchserve.backend import (
    TORCHSERVE_BATCH_DELAY_MS,
    TORCHSERVE_BATCH_SIZE,
    TorchServeBackend,
)


def _batching(
    tmp_path: Path, entry: dict[str, Any], model_config: str | None, **server: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The embedded and the torchserve backend's ``batching`` for one model entry."""
    checkpoint = tmp_path / "m" / "model.safetensors"  # never read: no model loads here
    checkpoint.parent.mkdir(exist_ok=True)
    if model_config is not None:
        (checkpoint.parent / "model-config.yaml").write_text(model_config)
    settings = load_settings(
        models=[{"name": "m", "checkpoint": str(checkpoint), **entry}], grpc_port=None, **server
    )
    embedded = EmbeddedBackend(settings, Metrics()).models()[0].batching
    remote = TorchServeBackend(settings, Metrics()).models()[0].batching
    return embedded, remote


# (entry, model-config.yaml, server settings) -> (max_batch_size, max_delay_ms, max_queue,
# adaptive) on the embedded backend, and (max_batch_size, max_delay_ms) on the torchserve one
CASES = [
    pytest.param({}, None, {}, (8, 5.0, 64, True), None, id="server-defaults"),
    pytest.param(
        {}, "batchSize: 4\nmaxBatchDelay: 10\n", {}, (4, 10.0, 64, True), (4, 10.0), id="file"
    ),
    pytest.param(
        {}, "batchSize: 4\nmaxBatchDelay: 0\n", {}, (4, 0.0, 64, True), (4, 0.0), id="file-zero"
    ),
    pytest.param(
        {"max_batch_size": 2, "max_delay_ms": 0, "max_queue": 3, "adaptive_batching": False},
        "batchSize: 4\nmaxBatchDelay: 10\n",
        {"max_delay_ms": 7.0},
        (2, 0.0, 3, False),
        (2, 0.0),
        id="entry-zero-over-file",
    ),
    pytest.param(
        {},
        "handler: {top_k: 3}\n",  # a file without batch keys
        {"max_batch_size": 16, "max_delay_ms": 0, "adaptive_batching": False, "max_queue": 9},
        (16, 0.0, 9, False),
        None,
        id="server-zero",
    ),
]


@pytest.mark.parametrize(("entry", "model_config", "server", "embedded", "remote"), CASES)
def test_batch_settings_precedence_keeps_zeros(
    tmp_path: Path,
    entry: dict[str, Any],
    model_config: str | None,
    server: dict[str, Any],
    embedded: tuple[Any, ...],
    remote: tuple[Any, ...] | None,
) -> None:
    got, ts = _batching(tmp_path, entry, model_config, **server)
    keys = ("max_batch_size", "max_delay_ms", "max_queue", "adaptive")
    assert tuple(got[k] for k in keys) == embedded
    # TorchServe batches with its own defaults where nothing is set; the queue bound is the same
    ts_expected = remote or (TORCHSERVE_BATCH_SIZE, TORCHSERVE_BATCH_DELAY_MS)
    assert (ts["max_batch_size"], ts["max_delay_ms"]) == ts_expected
    assert ts["max_in_flight"] == embedded[2] + ts_expected[0]


def test_a_zero_batch_size_in_model_config_is_refused(tmp_path: Path) -> None:
    """``batchSize: 0`` used to fall through to the default on one backend: now it is an error
    that names the file."""
    with pytest.raises(ValueError, match=r"model-config\.yaml: batchSize: .* greater than"):
        _batching(tmp_path, {}, "batchSize: 0\n")


def test_a_model_config_file_that_is_named_must_exist(tmp_path: Path) -> None:
    """Without the entry's model_config_file, a missing model-config.yaml means defaults; a
    named one that is not there (a typo) is an error naming it, on both backends."""
    checkpoint = tmp_path / "model.safetensors"
    entry = {"name": "m", "checkpoint": str(checkpoint)}
    for backend in (EmbeddedBackend, TorchServeBackend):
        backend(load_settings(models=[entry]), Metrics())  # type: ignore[abstract]
        named = {**entry, "model_config_file": str(tmp_path / "model-confg.yaml")}
        with pytest.raises(ValueError, match=r"model 'm': model_config_file .*model-confg\.yaml"):
            backend(load_settings(models=[named]), Metrics())  # type: ignore[abstract]


def test_handler_options_entry_over_model_config(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    (tmp_path / "model-config.yaml").write_text(
        "handler:\n  runtime: auto\n  top_k: 3\n  max_images: 8\n"
    )
    entry = {"name": "m", "checkpoint": str(checkpoint), "runtime": "eager"}
    settings = load_settings(models=[{**entry, "handler": {"top_k": 5}}])
    for backend in (EmbeddedBackend, TorchServeBackend):
        m = backend(settings, Metrics())._models["m"]  # type: ignore[abstract]
        assert m.handler == {"runtime": "eager", "top_k": 5, "max_images": 8}
        assert m.info.runtime == "eager" and m.info.state.value == "loading"


def test_loader_layers_and_nested_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """overrides > environment > file > defaults, nested mappings merged across layers."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "max_queue: 7\nretry_after_s: 2\ntorchserve_models: {a: ts_a}\n"
        "models: [{name: a, checkpoint: a.pt}, {name: b, checkpoint: b.pt}]\n"
    )
    monkeypatch.setenv("SEPVIT_TORCHSERVE_MODELS__b", "ts_b")
    monkeypatch.setenv("SEPVIT_RETRY_AFTER_S", "3")
    s = load_settings(cfg, max_queue=None, workers=2)  # None: not set
    assert (s.max_queue, s.retry_after_s, s.workers) == (7, 3, 2)
    assert s.torchserve_models == {"a": "ts_a", "b": "ts_b"}
    cfg.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_settings(cfg)


def test_cli_flags_take_type_choices_help_and_default_from_the_settings() -> None:
    actions = {a.option_strings[0]: a for a in _parser()._actions if a.option_strings}
    for flag, name in FLAGS.items():
        info = Settings.model_fields[name]
        action = actions[flag]
        assert info.description and action.help and action.help.startswith(info.description)
        if info.default is not None:
            assert action.help.endswith(f"(default {info.default})")
    assert actions["--backend"].choices == ["embedded", "torchserve"]
    assert actions["--log-level"].choices == ["debug", "info", "warning", "error", "critical"]
    assert actions["--port"].type is int and actions["--grpc-port"].type is int
    args = _parser().parse_args(["--port", "9000", "--log-level", "debug", "--models", "m.yaml"])
    assert (args.port, args.log_level, args.models) == (9000, "debug", "m.yaml")


def test_the_gateway_serves_the_library_tasks() -> None:
    """The torch-free task list the settings validate against is the model library's."""
    import sepvit
    from handlers.params import TASKS

    assert TASKS == sepvit.TASKS

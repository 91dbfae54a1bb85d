"""The gateway's log set-up: JSON lines on stderr, chatty libraries held to warnings."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import configure_logging


def test_json_lines_and_the_exporters_narration_is_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", json_logs=True)
        logging.getLogger("service.test").info("hello")
        logging.getLogger("onnxscript.optimizer").info("Skipping constant folding")
        logging.getLogger("onnx_ir.passes").warning("a real problem")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert [(d["logger"], d["level"], d["msg"]) for d in lines] == [
            ("service.test", "info", "hello"),
            ("onnx_ir.passes", "warning", "a real problem"),
        ]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name in ("onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.NOTSET)

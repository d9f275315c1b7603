"""The Secret wrapper and the redacting log filter: token values never reach a log line."""

from __future__ import annotations

import io
import json
import logging
import pickle

import pytest

from core import logs
from core.secret import Secret

PAT = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst"  # 52 base32 chars, like a classic PAT


def test_secret_repr_and_str_hide_the_value() -> None:
    s = Secret("super-secret-value-123")
    assert "super-secret" not in repr(s)
    assert "super-secret" not in str(s)
    assert f"{s}" == repr(s)
    assert s.reveal() == "super-secret-value-123"
    assert len(s.fingerprint) == 12


def test_secret_equality_and_refuses_pickle() -> None:
    assert Secret("value-one-xyz") == Secret("value-one-xyz")
    assert Secret("value-one-xyz") != Secret("value-two-xyz")
    with pytest.raises(TypeError):
        pickle.dumps(Secret("value-one-xyz"))


@pytest.fixture()
def captured() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("text", "DEBUG", stream=stream)
    yield stream
    logging.getLogger().handlers.clear()


def test_registered_secret_is_masked_in_message_args_and_extra(captured: io.StringIO) -> None:
    value = Secret("Zq-very-private-password-9")
    log = logging.getLogger("patrol.test")
    log.info("password is %s", value.reveal(), extra={"detail": f"x={value.reveal()}"})
    out = captured.getvalue()
    assert "very-private" not in out
    assert logs.REDACTED in out


def test_token_shaped_strings_are_masked_even_if_never_registered(captured: io.StringIO) -> None:
    log = logging.getLogger("patrol.test")
    log.warning("header was Basic %s and pat %s", "OjEyMzQ1Njc4OTBhYmNkZWY=", PAT)
    out = captured.getvalue()
    assert PAT not in out
    assert "OjEyMzQ1Njc4OTBhYmNkZWY=" not in out
    assert "Basic ***" in out


def test_exception_text_is_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("patrol.test")
    try:
        raise RuntimeError(f"boom {PAT}")
    except RuntimeError:
        log.exception("failed")
    out = captured.getvalue()
    assert "boom ***" in out
    assert PAT not in out


def test_json_format_is_one_object_per_line_with_extra() -> None:
    stream = io.StringIO()
    logs.configure("json", "INFO", stream=stream)
    try:
        logging.getLogger("patrol.rotation").info("step %s done", "create",
                                                  extra={"token": "keda", "rotation": "r1"})
    finally:
        logging.getLogger().handlers.clear()
    doc = json.loads(stream.getvalue().strip())
    assert doc["message"] == "step create done"
    assert doc["token"] == "keda"
    assert doc["logger"] == "patrol.rotation"
    assert doc["level"] == "info"


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "rotation 3f2a of token keda delivered to 2 sinks in 1.2s"
    assert logs.redact(text) == text

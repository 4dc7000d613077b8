"""Log lines: JSON with stable keys, stdlib/genesis records routed in, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from confguard.logs import configure_logging, get_logger, reopen, set_level


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_line_has_stable_keys_and_utc_timestamp() -> None:
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)
    get_logger("confguard.engine").info(
        "invite.state", uuid="u-1", ext="1000", room="test1", state="ringing",
        outcome=None, cause=None, elapsed_ms=1234,
    )
    (line,) = json_lines(stream)
    assert line["event"] == "invite.state"
    for key, value in [("uuid", "u-1"), ("ext", "1000"), ("room", "test1"),
                       ("state", "ringing"), ("elapsed_ms", 1234), ("level", "info")]:
        assert line[key] == value
    assert "outcome" in line and "cause" in line
    stamp = datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)


def test_auto_format_is_json_when_not_a_terminal() -> None:
    stream = io.StringIO()  # isatty() is False, like journald's stream socket
    configure_logging(format="auto", stream=stream)
    get_logger().info("hello", ext="1000")
    assert json_lines(stream)[0]["ext"] == "1000"


def test_console_format_is_not_json() -> None:
    stream = io.StringIO()
    configure_logging(format="console", stream=stream)
    get_logger().info("invite.state", ext="1000")
    text = stream.getvalue()
    assert "invite.state" in text and "ext=1000" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_genesis_style_record_never_prints_the_password() -> None:
    stream = io.StringIO()
    configure_logging(format="json", level="debug", stream=stream)
    genesis_like = logging.getLogger("genesis.protocol.base")
    genesis_like.debug("Send command: auth ClueCon")
    genesis_like.debug("Send command: %s", "auth ClueCon\n\n")
    genesis_like.debug("Send command: %r", "userauth 1000@sim.local:ClueCon")
    text = stream.getvalue()
    assert "ClueCon" not in text
    lines = json_lines(stream)
    assert len(lines) == 3
    assert lines[0]["event"] == "Send command: auth <redacted>"
    assert lines[0]["logger"] == "genesis.protocol.base"
    assert lines[0]["level"] == "debug"


def test_secret_keys_and_auth_values_are_redacted_in_our_lines() -> None:
    stream = io.StringIO()
    configure_logging(format="json", stream=stream)
    get_logger().info("esl.send", password="ClueCon", secret="s", command="auth ClueCon",
                      nested={"password": "ClueCon", "line": ["auth ClueCon"]})
    text = stream.getvalue()
    assert "ClueCon" not in text
    (line,) = json_lines(stream)
    assert line["password"] == "<redacted>" and line["secret"] == "<redacted>"
    assert line["command"] == "auth <redacted>"


def test_redaction_in_console_format_too() -> None:
    stream = io.StringIO()
    configure_logging(format="console", stream=stream)
    logging.getLogger("genesis").warning("Send command: auth ClueCon")
    assert "ClueCon" not in stream.getvalue() and "auth <redacted>" in stream.getvalue()


def test_level_filters_and_set_level_changes_it() -> None:
    stream = io.StringIO()
    configure_logging(format="json", level="warning", stream=stream)
    log = get_logger("confguard.x")
    log.info("hidden")
    logging.getLogger("genesis").info("hidden too")
    log.warning("shown")
    set_level("debug")
    log.debug("now shown")
    logging.getLogger("genesis.y").debug("genesis shown")
    events = [line["event"] for line in json_lines(stream)]
    assert events == ["shown", "now shown", "genesis shown"]
    with pytest.raises(ValueError, match="allowed"):
        set_level("loud")


def test_exception_is_rendered_in_the_line() -> None:
    stream = io.StringIO()
    configure_logging(format="json", stream=stream)
    try:
        raise RuntimeError("broken auth ClueCon")
    except RuntimeError:
        get_logger().exception("failure")
    (line,) = json_lines(stream)
    assert "RuntimeError" in str(line["exception"])
    assert "ClueCon" not in stream.getvalue()


def test_log_file_and_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "confguard.log"
    configure_logging(format="auto", file=str(path))
    log = get_logger()
    log.info("first", ext="1000")
    rotated = tmp_path / "confguard.log.1"
    path.rename(rotated)
    log.info("second")  # still written into the moved file
    reopen()
    log.info("third")
    old = [json.loads(line)["event"] for line in rotated.read_text().splitlines()]
    new = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert old == ["first", "second"]
    assert new == ["third"]


def test_reconfigure_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(format="json", stream=first)
    configure_logging(format="json", stream=second)
    get_logger().info("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["once"]


def test_bound_values_appear_on_every_line() -> None:
    stream = io.StringIO()
    configure_logging(format="json", stream=stream)
    log = get_logger("confguard.invite", uuid="u-9", ext="1001")
    log.info("a")
    log.info("b", state="joined")
    lines = json_lines(stream)
    assert [(line["uuid"], line["ext"]) for line in lines] == [("u-9", "1001")] * 2
    assert lines[1]["state"] == "joined"

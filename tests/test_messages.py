"""What a client may send as `new:msg`: user at most 32 characters, body 1..2000 after trimming, strings only."""

from __future__ import annotations

from typing import Any

import pytest

from shared.messages import (
    MAX_BODY_CHARS,
    MAX_USER_CHARS,
    ChatMessage,
    Draft,
    InvalidMessage,
    validate_draft,
    validate_user,
)


def test_valid_message_is_trimmed() -> None:
    assert validate_draft({"user": "  alice ", "body": "\n hello \t"}) == Draft("alice", "hello")


def test_user_of_32_characters_is_accepted() -> None:
    assert MAX_USER_CHARS == 32
    assert validate_draft({"user": "u" * 32, "body": "x"}).user == "u" * 32


def test_user_of_33_characters_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="32"):
        validate_draft({"user": "u" * 33, "body": "x"})


@pytest.mark.parametrize("user", ["SYSTEM", " SYSTEM ", "system", "System"])
def test_the_name_system_is_reserved_for_the_server(user: str) -> None:
    with pytest.raises(InvalidMessage, match="user SYSTEM is reserved for the server"):
        validate_user(user)


def test_names_that_merely_contain_system_are_accepted() -> None:
    assert validate_user("SYSTEMS") == "SYSTEMS"
    assert validate_user("not SYSTEM") == "not SYSTEM"


def test_user_is_counted_in_characters_not_bytes() -> None:
    assert validate_draft({"user": "я" * 32, "body": "x"}).user == "я" * 32


def test_blank_user_becomes_anonymous() -> None:
    assert validate_draft({"user": "   ", "body": "x"}).user == "anonymous"


def test_body_of_one_character_is_accepted() -> None:
    assert validate_draft({"user": "u", "body": "x"}).body == "x"


def test_body_of_2000_characters_is_accepted() -> None:
    assert MAX_BODY_CHARS == 2000
    assert validate_draft({"user": "u", "body": "b" * 2000}).body == "b" * 2000


def test_body_length_is_measured_after_trimming() -> None:
    assert validate_draft({"user": "u", "body": "  " + "b" * 2000 + "\n"}).body == "b" * 2000


def test_body_of_2001_characters_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="2000"):
        validate_draft({"user": "u", "body": "b" * 2001})


@pytest.mark.parametrize("body", ["", " ", "\n\t  \r\n"])
def test_empty_or_whitespace_body_is_refused(body: str) -> None:
    with pytest.raises(InvalidMessage, match="empty"):
        validate_draft({"user": "u", "body": body})


@pytest.mark.parametrize("user", [None, 5, 1.5, True, ["alice"], {"name": "alice"}])
def test_non_string_user_is_refused(user: Any) -> None:
    with pytest.raises(InvalidMessage, match="user"):
        validate_draft({"user": user, "body": "x"})


@pytest.mark.parametrize("body", [None, 5, 1.5, False, ["hi"], {"text": "hi"}])
def test_non_string_body_is_refused(body: Any) -> None:
    with pytest.raises(InvalidMessage, match="body"):
        validate_draft({"user": "u", "body": body})


def test_missing_user_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="user"):
        validate_draft({"body": "x"})


def test_missing_body_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="body"):
        validate_draft({"user": "u"})


def test_validate_user_refuses_non_strings_and_long_names() -> None:
    with pytest.raises(InvalidMessage):
        validate_user(7)
    with pytest.raises(InvalidMessage):
        validate_user("u" * 33)


def test_stored_message_payload_has_the_broadcast_fields() -> None:
    message = ChatMessage("1700000000000-0", "alice", "hi", "nonode@nohost", 1700000000000)

    assert message.payload() == {
        "id": "1700000000000-0",
        "user": "alice",
        "body": "hi",
        "node": "nonode@nohost",
        "ts": 1700000000000,
    }

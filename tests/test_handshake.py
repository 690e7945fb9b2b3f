"""The cookie handshake's proofs and challenges, without a server."""

from __future__ import annotations

from stage2_cluster import handshake


def test_a_proof_checks_only_with_the_same_cookie_and_parts() -> None:
    proof = handshake.proof("cookie-0123456789abcdef", "hello", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert handshake.valid("cookie-0123456789abcdef", proof, "hello", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert not handshake.valid("another-cookie-0123456", proof, "hello", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert not handshake.valid("cookie-0123456789abcdef", proof, "confirm", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert not handshake.valid("cookie-0123456789abcdef", None, "hello")


def hello_of(node: str) -> handshake.Hello:
    return handshake.Hello(node, "1.2.3.4:4000", "na", "0123456789abcdef")


def test_a_challenge_is_redeemed_once_and_only_by_the_node_it_was_issued_to() -> None:
    challenges = handshake.Challenges()
    challenge = challenges.issue(hello_of("a@x"))
    assert challenges.redeem(challenge, "c@x") is None
    assert challenges.redeem(challenge, "a@x") is None  # the wrong node's attempt used it up
    hello = hello_of("a@x")
    again = challenges.issue(hello)
    assert challenges.redeem(again, "a@x") == hello
    assert challenges.redeem(again, "a@x") is None


def test_unanswered_hellos_cannot_grow_the_open_challenges_without_bound() -> None:
    challenges = handshake.Challenges()
    oldest = challenges.issue(hello_of("a@x"))
    for _ in range(handshake.MAX_OPEN_CHALLENGES + 100):
        challenges.issue(hello_of("stranger@x"))
    hello = hello_of("a@x")
    newest = challenges.issue(hello)
    assert len(challenges._open) == handshake.MAX_OPEN_CHALLENGES
    assert challenges.redeem(oldest, "a@x") is None
    assert challenges.redeem(newest, "a@x") == hello


def test_a_proof_that_is_not_64_hex_digits_is_refused_without_comparing() -> None:
    """hmac.compare_digest raises on non-ASCII str; such a proof must be a plain refusal."""
    for given in ("é" * 64, "0" * 63, "G" * 64, 64, None, "\uff10" * 64):
        assert not handshake.well_formed(given)
        assert not handshake.valid("cookie-0123456789abcdef", given, "confirm")


def test_a_peer_list_is_signed_in_one_canonical_form() -> None:
    peers = [{"node": "b@x", "address": "1.2.3.4:4000"}]
    reordered = [{"address": "1.2.3.4:4000", "node": "b@x"}]
    assert handshake.digest(peers) == handshake.digest(reordered)
    assert handshake.digest(peers) != handshake.digest([*peers, {"node": "evil@x", "address": "6.6.6.6:1"}])
    assert handshake.peer_list([{"node": "b@x"}]) is None
    assert handshake.peer_list([{"node": "b@x", "address": "1:1", "extra": 1}]) is None
    assert handshake.peer_list("all") is None

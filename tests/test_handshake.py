"""The cookie handshake's proofs and challenges, without a server."""

from __future__ import annotations

from stage2_cluster import handshake


def test_a_proof_checks_only_with_the_same_cookie_and_parts() -> None:
    proof = handshake.proof("cookie-0123456789abcdef", "hello", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert handshake.valid("cookie-0123456789abcdef", proof, "hello", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert not handshake.valid("another-cookie-0123456", proof, "hello", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert not handshake.valid("cookie-0123456789abcdef", proof, "confirm", "b@x", "a@x", "1.2.3.4:4000", "nonce")
    assert not handshake.valid("cookie-0123456789abcdef", None, "hello")


def test_a_challenge_is_redeemed_once_and_only_by_the_node_it_was_issued_to() -> None:
    challenges = handshake.Challenges()
    challenge = challenges.issue("a@x", "1.2.3.4:4000")
    assert challenges.redeem(challenge, "c@x") is None
    assert challenges.redeem(challenge, "a@x") is None  # the wrong node's attempt used it up
    again = challenges.issue("a@x", "1.2.3.4:4000")
    assert challenges.redeem(again, "a@x") == "1.2.3.4:4000"
    assert challenges.redeem(again, "a@x") is None


def test_unanswered_hellos_cannot_grow_the_open_challenges_without_bound() -> None:
    challenges = handshake.Challenges()
    oldest = challenges.issue("a@x", "1.2.3.4:4000")
    for _ in range(handshake.MAX_OPEN_CHALLENGES + 100):
        challenges.issue("stranger@x", "5.6.7.8:1")
    newest = challenges.issue("a@x", "1.2.3.4:4000")
    assert len(challenges._open) == handshake.MAX_OPEN_CHALLENGES
    assert challenges.redeem(oldest, "a@x") is None
    assert challenges.redeem(newest, "a@x") == "1.2.3.4:4000"

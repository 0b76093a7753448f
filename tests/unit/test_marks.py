"""Effect keys and flags are typed, and rows written by earlier releases (plain strings) decode
into those types unchanged."""

from __future__ import annotations

import hashlib
import json

from gateway.domain.codec import decode, encode
from gateway.domain.marks import EffectKey, EffectKind, Flag, FlagKind
from gateway.domain.trade import EffectRefused, Phase, Terms, TradeState

LOCK = hashlib.sha256(b"lock").digest()


def _state(**fields) -> TradeState:  # noqa: ANN003
    terms = Terms("0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, "0x" + "44" * 20, 100, 1,
                  b"\x01" * 32, b"\x02" * 32, 1_000, 5_000)
    return TradeState(b"\x03" * 32, terms, Phase.AGREED, **fields)


def test_a_key_and_a_flag_know_their_parts() -> None:
    key = EffectKey.of(EffectKind.PAYMENT_CLAIM, LOCK)
    assert key == f"payment_claim:{LOCK.hex()}"
    assert key.kind is EffectKind.PAYMENT_CLAIM and key.lock_id == LOCK
    assert EffectKey.of(EffectKind.PAYMENT_LOCK).lock_id is None
    blocked = Flag.of(FlagKind.BLOCKED, key)
    assert blocked == f"blocked:payment_claim:{LOCK.hex()}"
    assert blocked.is_a(FlagKind.BLOCKED) and blocked.subject == key
    assert EffectKey(blocked.subject).lock_id == LOCK
    assert Flag.failed(EffectKind.DELIVERY_CLAIM) == "delivery_claim_failed"
    assert Flag.failed(EffectKind.DELIVERY_CLAIM).is_a(FlagKind.DELIVERY_CLAIM_FAILED)
    assert Flag.of(FlagKind.TAKE_DELIVERY).subject is None


def test_a_stored_state_of_plain_strings_decodes_into_the_types() -> None:
    """What the previous release wrote: the same JSON, read back typed and equal."""
    stored = json.loads(json.dumps(encode(_state(
        pending=frozenset({f"payment_claim:{LOCK.hex()}", "delivery_lock"}),
        flags=("hashlock_from_buyer", f"chain_disagrees:{LOCK.hex()}", "from_a_later_release")))))
    state = decode(TradeState, stored)
    assert all(type(k) is EffectKey for k in state.pending)
    assert all(type(f) is Flag for f in state.flags)
    assert {k.kind for k in state.pending} == {EffectKind.PAYMENT_CLAIM, EffectKind.DELIVERY_LOCK}
    assert state.flags[1].is_a(FlagKind.CHAIN_DISAGREES) and state.flags[1].subject == LOCK.hex()
    assert state.flags[2].name == "from_a_later_release"  # an unknown kind still decodes
    assert json.loads(json.dumps(encode(state))) == stored  # and is written back the same


def test_a_logged_refusal_decodes_its_key() -> None:
    logged = json.loads(json.dumps(encode(EffectRefused(b"\x03" * 32, EffectKey.of(
        EffectKind.PAYMENT_LOCK), "balance too low"))))
    assert logged["key"] == "payment_lock"
    assert type(decode(EffectRefused, logged).key) is EffectKey

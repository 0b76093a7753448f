"""The process's decoded trade states (`gateway.db.trade_store._DecodedStates`): a state read
back is the stored value decoded, never a kept state the row no longer holds, whether the row
is read as its text (the dispatcher's reads) or as a parsed value (the ORM's)."""

from __future__ import annotations

import json
from dataclasses import replace

from gateway.db.trade_store import _DecodedStates
from gateway.domain.codec import encode
from gateway.domain.trade import ActionProposeTrade, Phase
from tests.unit.test_trade_transitions import POLICY, TERMS, new_trade


def _text(state) -> str:  # noqa: ANN001
    return json.dumps(encode(state))  # as the dispatcher writes it


def _stored(state) -> dict:  # noqa: ANN001
    return json.loads(_text(state))  # as the ORM gives it back


def test_a_changed_row_is_decoded_not_the_kept_state() -> None:
    """Another writer (a second relayer, an API worker) changed the row, or this process's
    write rolled back: the value read differs from the one kept, so it is decoded."""
    states = _DecodedStates(8)
    mine, _ = new_trade(ActionProposeTrade(b"\x01" * 32, TERMS), POLICY)
    theirs = replace(mine, phase=Phase.CANCELLED)
    key = mine.trade_id.hex()
    states.keep(key, _text(mine), mine)
    assert states.decode_text(key, _text(mine)) is mine  # the same text: the kept state
    read = states.decode_text(key, _text(theirs))
    assert read == theirs and read is not mine
    assert states.decode_text(key, _text(mine)) == mine  # and back again
    # The same through the ORM's parsed values.
    states.keep(key, _stored(mine), mine)
    assert states.decode(_stored(mine)) is mine
    read = states.decode(_stored(theirs))
    assert read == theirs and read is not mine


def test_text_and_parsed_value_are_never_taken_for_each_other() -> None:
    """A kept text compared with a parsed value (or the reverse) is not equal: the row is
    decoded, never answered with a state kept for the other form of another value."""
    states = _DecodedStates(8)
    mine, _ = new_trade(ActionProposeTrade(b"\x02" * 32, TERMS), POLICY)
    theirs = replace(mine, phase=Phase.CANCELLED)
    key = mine.trade_id.hex()
    states.keep(key, _stored(mine), mine)
    assert states.decode_text(key, _text(theirs)) == theirs
    states.keep(key, _text(mine), mine)
    assert states.decode(_stored(theirs)) == theirs


def test_kept_states_are_bounded_oldest_out() -> None:
    states = _DecodedStates(3)
    made = [new_trade(ActionProposeTrade(bytes([i]) * 32, TERMS), POLICY)[0] for i in range(5)]
    for state in made:
        states.keep(state.trade_id.hex(), _text(state), state)
    assert [bytes.fromhex(k) for k in states.kept] == [s.trade_id for s in made[2:]]
    states.decode_text(made[2].trade_id.hex(), _text(made[2]))  # read: the newest now
    states.keep(made[0].trade_id.hex(), _text(made[0]), made[0])
    assert [bytes.fromhex(k) for k in states.kept] == \
        [made[4].trade_id, made[2].trade_id, made[0].trade_id]

"""`evolve` (the machine's fast `dataclasses.replace`) makes the value `replace` makes, for every
field of every domain dataclass it is used on, and refuses a field that does not exist."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.domain.state import evolve
from tests.unit.test_trade_transitions import PHASES, trade_in


@pytest.mark.parametrize("phase", PHASES)
def test_evolve_is_replace(phase: str) -> None:
    state = trade_in(phase)
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        for obj, name, new in ((state, f.name, value), (state, "phase", state.phase),
                               (state.terms, "amount", state.terms.amount + 1)):
            got, want = evolve(obj, **{name: new}), dataclasses.replace(obj, **{name: new})
            assert got == want and hash(got) == hash(want) and type(got) is type(want)
    assert evolve(state) == state and evolve(state) is not state
    changed = evolve(state, payment_time=state.payment_time + 1)
    assert changed.payment_time == state.payment_time + 1 and state != changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.payment_time = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        evolve(state, no_such_field=1)

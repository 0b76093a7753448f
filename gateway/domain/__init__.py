"""Pure domain model: types, trade state and state transitions. Stdlib only, no I/O, no clock."""

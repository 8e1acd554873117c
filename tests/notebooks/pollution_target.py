"""A user module with a module-level value that a notebook changes (isolation tests)."""

COUNTER = 0

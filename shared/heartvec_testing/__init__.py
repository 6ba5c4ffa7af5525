"""Helpers of heartvec's tests and benchmarks: label volumes written for them (`volumes`), the
real servers and processes of the service started and stopped (`services`), malformed inputs
(`bad_inputs`) and geometric references computed the slow, obvious way (`geometry`). Used by
`tests/` and `bench/` from a checkout; nothing in `heartvec` imports it."""

"""The heartvec HTTP API (`heartvec serve`): upload a label volume, follow its job, download the
results. Thin: parse, validate, persist, enqueue; the work happens in `heartvec.jobs`."""

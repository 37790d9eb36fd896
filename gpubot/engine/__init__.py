"""The job engine: the reconcile tick, one idempotent step per job, the remote job
on the instance, data staging, idle/stuck decisions, orphan reaping and offer planning."""

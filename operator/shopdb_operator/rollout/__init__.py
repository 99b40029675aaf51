"""Changes to a running cluster: pure decisions (what changed, reload or restart, the next
step), like failover/. The I/O is in handlers/rollout.py, one step per check."""

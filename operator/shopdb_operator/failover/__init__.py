"""Automated failover and planned switchover.

`decide` holds the pure rules (is the primary failing, who may be promoted, which step is
next, where routes go); `monitor` observes the instances; `execute` performs one recorded
step at a time against narrow Kubernetes, PostgreSQL and PgBouncer interfaces, whose real
implementations live in `adapters`. handlers/failover.py drives them from a kopf daemon.
"""

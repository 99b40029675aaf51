"""Primary fencing: a primary accepts writes only while it holds the cluster's primary Lease.

lease.py is the arithmetic both sides share (pure, stdlib only); agent.py is the
instance-agent's state machine (pure) and agent_main.py its loop (the API server, the lease
file, the postmaster). The operator's side lives in failover/ (handover, promotion rule).
"""

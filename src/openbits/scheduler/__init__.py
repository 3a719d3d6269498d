"""Which jobs run, when they retry and when they time out (policy.py pure, run.py I/O)."""

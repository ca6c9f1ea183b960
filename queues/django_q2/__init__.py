"""Everything that touches django-q2: cluster, worker loop, brokers, heartbeats, payloads."""

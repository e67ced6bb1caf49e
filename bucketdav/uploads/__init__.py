"""Uploads: receiving bodies, the pipeline and its outcome, archives, replicas and names."""

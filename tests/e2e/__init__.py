"""End-to-end test helpers and tests (real Prometheus and the local cluster)."""

"""Benchmarks for pg-rollout: ``python -m bench`` runs them all and reports ratios, not verdicts."""

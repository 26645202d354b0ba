"""Evaluation (accuracy, maj@k, pass@k, format compliance, reports) and on-device benchmarks."""

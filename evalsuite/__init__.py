"""evalsuite: accuracy, format compliance, latency, memory and throughput, with reports."""

"""The server's Prometheus metrics, one registry per app (so several servers can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("edgereason_requests_total", "Requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("edgereason_prompt_tokens_total", "Prompt tokens", registry=r)
        self.tokens = Counter("edgereason_generated_tokens_total", "Generated tokens (retries and vote samples included)",
                              registry=r)
        self.latency = Histogram("edgereason_request_seconds", "Request latency", ["endpoint"], registry=r)
        self.ttft = Histogram("edgereason_ttft_seconds", "Time to first token (streaming)", registry=r)
        self.tps = Gauge("edgereason_tokens_per_second", "Tokens/s of the last completion", registry=r)
        self.queue = Gauge("edgereason_queue_depth", "Requests waiting for an engine slot", registry=r)
        self.in_flight = Gauge("edgereason_in_flight", "Generations running in the engine", registry=r)
        self.peak_in_flight = Gauge("edgereason_peak_in_flight", "Most generations ever running at once", registry=r)
        self.votes = Counter("edgereason_votes_total", "Majority votes", registry=r)
        self.early_stops = Counter("edgereason_vote_early_stops_total", "Votes stopped once decided", registry=r)
        self.invalid = Counter("edgereason_format_invalid_total", "Completions failing format validation", registry=r)
        self.retries = Counter("edgereason_format_retries_total", "Extra attempts for format-invalid completions",
                               registry=r)
        self.cancelled = Counter("edgereason_cancelled_total", "Generations stopped because the client left",
                                 registry=r)

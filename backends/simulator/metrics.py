"""vLLM-style Prometheus metrics of one simulated deployment (text exposition format 0.0.4).

The names and buckets are vLLM's, so that whatever scrapes a real vLLM server (the
gateway's health poller, a Grafana dashboard) reads the simulator unchanged.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

#: vLLM's buckets (vllm/engine/metrics.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
    20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        cumulative = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
        lines.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


class Metrics:
    """Counters and histograms of one deployment; gauges are read live from its state."""

    __slots__ = ("e2e", "generation_tokens", "prompt_tokens", "requests", "ttft")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        #: finished requests by finish reason ("stop", "length", "abort", "error")
        self.requests: dict[str, int] = {}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    def finished(self, reason: str) -> None:
        self.requests[reason] = self.requests.get(reason, 0) + 1

    def render(
        self, *, model: str, running: int, waiting: int, extra: Callable[[str], list[str]]
    ) -> bytes:
        labels = f'model_name="{model}"'
        out = [
            "# HELP vllm:num_requests_running Number of requests holding a concurrency slot.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(running)!r}",
            "# HELP vllm:num_requests_waiting Number of requests queued for a slot.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(waiting)!r}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_tokens)!r}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens)!r}",
            "# HELP vllm:request_success_total Count of finished requests by reason.",
            "# TYPE vllm:request_success_total counter",
            *(
                f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(n)!r}'
                for reason, n in sorted(self.requests.items())
            ),
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
            "# TYPE vllm:time_to_first_token_seconds histogram",
            *self.ttft.render("vllm:time_to_first_token_seconds", labels),
            "# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency "
            "in seconds.",
            "# TYPE vllm:e2e_request_latency_seconds histogram",
            *self.e2e.render("vllm:e2e_request_latency_seconds", labels),
            *extra(labels),
        ]
        return ("\n".join(out) + "\n").encode()

"""Prometheus metrics of one server app, in a registry of its own (never the process-global one).

What each series means is documented in docs/server.md; in short: requests by served model and
status, latency, the pipeline queue, tokens and FLOPs per model role (prompt = computed prompt tokens
including the SLM's shadow pass; generated = new tokens), where the hand-over happened, and — when
`server.compare_estimate` is set — the FLOPs of each request relative to the LLM answering alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from ..result import TandemResult

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
HANDOVER_BUCKETS = (0, 16, 32, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self, *, llm_params: int | None = None, compare_estimate: float | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.compare_estimate = compare_estimate
        self.llm_params = llm_params
        r = self.registry
        self.requests = Counter("tandem_requests", "Chat completion requests by served model and status "
                                "(for a stream that failed after its headers: the status of its error event; "
                                "499: the client went away)", ["model", "status"], registry=r)
        self.latency = Histogram("tandem_request_duration_seconds", "Chat completion wall time, from "
                                 "admission to the last byte", ["model", "stream"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.first_token = Histogram("tandem_time_to_first_token_seconds", "Streaming requests: admission "
                                     "to the first content sent", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("tandem_queue_wait_seconds", "Admission to the start of the pipeline run",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("tandem_queue_depth", "Requests admitted and not finished (waiting + "
                                 "running)", registry=r)
        self.tokens = Counter("tandem_model_tokens", "Tokens per model role: kind=prompt counts prompt tokens "
                              "computed (cache hits excluded, the SLM's shadow pass included), kind=generated "
                              "new tokens", ["model", "role", "kind"], registry=r)
        self.flops = Counter("tandem_model_flops", "FLOPs per model role, 2 x parameters x tokens of that kind; "
                             "the sum over kinds is the honest total, kind=generated alone the paper's "
                             "definition", ["model", "role", "kind"], registry=r)
        self.handover = Histogram("tandem_handover_llm_tokens", "LLM tokens written before the hand-over to "
                                  "the SLM (0: the SLM alone from checkpoint 0); tandem runs that handed over",
                                  ["model"], buckets=HANDOVER_BUCKETS, registry=r)
        self.stop_reasons = Counter("tandem_stop_reasons", "Why each run stopped the LLM (slm_alone, "
                                    "sufficient, budget, llm_finished, llm_alone)",
                                    ["model", "reason"], registry=r)
        self.fallbacks = Counter("tandem_fallbacks", "Runs retried with one model after a backend failure",
                                 ["model", "to"], registry=r)
        self.cancellations = Counter("tandem_cancellations", "Runs cancelled (disconnect, timeout, shutdown)",
                                     ["reason"], registry=r)
        self.alone_estimate = Counter("tandem_llm_alone_flops_estimate", "Estimated FLOPs of the LLM "
                                      "answering the same requests alone: 2 x LLM parameters x "
                                      "server.compare_estimate per successful request", ["model"], registry=r)
        self.relative = Histogram("tandem_flops_relative_to_llm_alone", "Per request: total FLOPs of both "
                                  "models / the LLM-alone estimate (needs server.compare_estimate)",
                                  ["model"], buckets=RATIO_BUCKETS, registry=r)

    def observe_result(self, model: str, result: TandemResult) -> None:
        for role, cost in result.cost.models.items():
            for kind, n in (("prompt", cost.input_tokens), ("generated", cost.generated_tokens)):
                self.tokens.labels(model, role, kind).inc(n)
                self.flops.labels(model, role, kind).inc(2.0 * cost.n_params * n)
        self.stop_reasons.labels(model, result.stop_reason).inc()
        if result.method == "tandem" and result.handover_tokens is not None:
            self.handover.labels(model).observe(result.handover_tokens)
        if self.compare_estimate and self.llm_params:
            alone = 2.0 * self.llm_params * self.compare_estimate
            self.alone_estimate.labels(model).inc(alone)
            self.relative.labels(model).observe(result.cost.flops_total / alone)

    def render(self) -> bytes:
        return generate_latest(self.registry)

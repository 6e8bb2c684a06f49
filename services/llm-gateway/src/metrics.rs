//! The gateway's metric families and their HELP text.

use boardroom_runtime::metrics::{Family, Kind};

/// Every family the gateway records.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "llm_requests_total",
        kind: Kind::Counter,
        help: "Chat calls, by model alias and result (miss, exact, coalesced, semantic, or the error kind).",
    },
    Family {
        name: "llm_tokens_total",
        kind: Kind::Counter,
        help: "Tokens of upstream answers, by deployment, caller and direction (input uncached, cache_read, cache_write, output: disjoint, they sum to every token).",
    },
    Family {
        name: "llm_cost_micros_total",
        kind: Kind::Counter,
        help: "Cost of upstream answers in micro-dollars from the price table, by deployment and caller.",
    },
    Family {
        name: "llm_time_to_first_token_seconds",
        kind: Kind::Histogram,
        help: "Time from a streamed call's arrival to its first token, retries and fallback included, by deployment.",
    },
    Family {
        name: "llm_output_tokens_per_second",
        kind: Kind::Histogram,
        help: "Output tokens per second of a stream after its first token, by deployment.",
    },
    Family {
        name: "llm_upstream_duration_seconds",
        kind: Kind::Histogram,
        help: "Time of one upstream attempt of a unary call, by deployment.",
    },
    Family {
        name: "llm_upstream_in_flight",
        kind: Kind::Gauge,
        help: "Upstream unary attempts in flight, by deployment.",
    },
    Family {
        name: "llm_upstream_connections_opened_total",
        kind: Kind::Counter,
        help: "Connections the upstream pool opened, by deployment (against llm_requests_total: keep-alive reuse).",
    },
    Family {
        name: "llm_gateway_overhead_seconds",
        kind: Kind::Histogram,
        help: "Time of a unary call minus the time waiting on the upstream, by rpc.",
    },
    Family {
        name: "llm_retries_total",
        kind: Kind::Counter,
        help: "Retries of an upstream call on the same deployment, by deployment.",
    },
    Family {
        name: "llm_fallbacks_total",
        kind: Kind::Counter,
        help: "Calls that left a deployment for the next one, by the deployment left.",
    },
    Family {
        name: "llm_circuit_open",
        kind: Kind::Gauge,
        help: "1 while a deployment's circuit is open (calls skip it), else 0, by deployment.",
    },
    Family {
        name: "llm_circuit_opened_total",
        kind: Kind::Counter,
        help: "Times a deployment's circuit opened, by deployment.",
    },
    Family {
        name: "llm_limited_total",
        kind: Kind::Counter,
        help: "Calls refused RESOURCE_EXHAUSTED by a caller's limit, by caller and limit.",
    },
    Family {
        name: "llm_semantic_lookups_total",
        kind: Kind::Counter,
        help: "Semantic cache lookups, by result (hit, miss).",
    },
    Family {
        name: "llm_semantic_guard_rejections_total",
        kind: Kind::Counter,
        help: "Similar cached prompts refused as meaning something else, by reason (the guard's kind of difference, verifier, verifier unavailable).",
    },
    Family {
        name: "llm_semantic_verifier_calls_total",
        kind: Kind::Counter,
        help: "Semantic cache verifier verdicts, by result (same, different, unavailable, cached).",
    },
    Family {
        name: "llm_semantic_verifier_duration_seconds",
        kind: Kind::Histogram,
        help: "Time of a semantic cache verifier call (a cross-encoder behind /v1/rerank).",
    },
    Family {
        name: "llm_http_requests_total",
        kind: Kind::Counter,
        help: "Calls of the OpenAI-compatible HTTP API, by route and HTTP status.",
    },
    Family {
        name: "llm_http_request_duration_seconds",
        kind: Kind::Histogram,
        help: "Time of an OpenAI-compatible HTTP call to its response headers (a stream's first chunk), by route.",
    },
];

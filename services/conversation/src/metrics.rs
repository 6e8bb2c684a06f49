//! The conversation service's metric families and their HELP text.

use boardroom_runtime::metrics::{Family, Kind};

/// Every family the service records.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "conversation_turns_total",
        kind: Kind::Counter,
        help: "Turns that ended, by outcome (completed, failed, replayed, …).",
    },
    Family {
        name: "conversation_turns_running",
        kind: Kind::Gauge,
        help: "Turns this instance runs now.",
    },
    Family {
        name: "conversation_resident_entries",
        kind: Kind::Gauge,
        help: "Entries of each per-thread or per-turn structure this instance keeps in memory besides its caches, by structure (recent_windows, turn_logs_running, turn_logs_finished, thread_contexts, running_turns, tool_results, summaries_running).",
    },
    Family {
        name: "conversation_resident_bytes",
        kind: Kind::Gauge,
        help: "Weighed bytes of the byte-bounded in-memory structures, by structure (recent_windows, turn_logs_finished).",
    },
    Family {
        name: "conversation_turns_queued",
        kind: Kind::Gauge,
        help: "Turns waiting on this instance for their thread (double-text ENQUEUE).",
    },
    Family {
        name: "conversation_turns_interrupted_total",
        kind: Kind::Counter,
        help: "Running turns cancelled by a newer turn on their thread (double-text INTERRUPT).",
    },
    Family {
        name: "conversation_turn_overhead_seconds",
        kind: Kind::Histogram,
        help: "Time of a turn minus the time waiting on the model: the engine's own cost.",
    },
    Family {
        name: "conversation_round_overhead_seconds",
        kind: Kind::Histogram,
        help: "The engine's own cost of a turn divided by its rounds (the moderator's included), by deliberation mode.",
    },
    Family {
        name: "conversation_node_duration_seconds",
        kind: Kind::Histogram,
        help: "Time in each node of the turn workflow, by node.",
    },
    Family {
        name: "conversation_advisor_failures_total",
        kind: Kind::Counter,
        help: "Advisors that gave no answer in a turn, by reason.",
    },
    Family {
        name: "conversation_tool_calls_total",
        kind: Kind::Counter,
        help: "Tool calls the advisors made, by tool.",
    },
    Family {
        name: "conversation_summaries_total",
        kind: Kind::Counter,
        help: "Background summaries of long threads, by outcome (applied, failed).",
    },
    Family {
        name: "conversation_recent_window_total",
        kind: Kind::Counter,
        help: "Reads of a thread's recent messages, by result (hit: from the cached window, extended, miss).",
    },
    Family {
        name: "conversation_turn_writes_total",
        kind: Kind::Counter,
        help: "Completed turns stored, by path (one_statement: the whole write in one PostgreSQL statement, rebased once if the head moved since the lease; transaction: statement by statement, on SQLite or when the head moved again).",
    },
    Family {
        name: "conversation_checkpoints_pruned_total",
        kind: Kind::Counter,
        help: "Checkpoints deleted beyond a thread's retention.",
    },
    Family {
        name: "conversation_cancels_heard_total",
        kind: Kind::Counter,
        help: "Cancels of turns running here that another instance published.",
    },
    Family {
        name: "conversation_leases_lost_total",
        kind: Kind::Counter,
        help: "Turns that lost their thread's lease (another instance took the thread after it expired).",
    },
    Family {
        name: "conversation_lease_renewals_failed_total",
        kind: Kind::Counter,
        help: "Lease renewals that failed (retried soon after).",
    },
    Family {
        name: "conversation_lease_releases_retried_total",
        kind: Kind::Counter,
        help: "Lease releases that failed and were retried.",
    },
    Family {
        name: "conversation_turn_log_write_failures_total",
        kind: Kind::Counter,
        help: "Failed writes of a turn's event log to Redis (retried with backoff).",
    },
    Family {
        name: "conversation_memory_recall_seconds",
        kind: Kind::Histogram,
        help: "Time of a turn's recall from the boardroom memory with facts to search: the cached facts, the message's embedding and the search.",
    },
    Family {
        name: "conversation_memory_search_seconds",
        kind: Kind::Histogram,
        help: "Time of a recall's in-process search of the boardroom memory's facts (the embedding call aside).",
    },
    Family {
        name: "conversation_memory_recalled_total",
        kind: Kind::Counter,
        help: "Facts of the boardroom memory recalled into turns' contexts.",
    },
    Family {
        name: "conversation_memory_recall_failures_total",
        kind: Kind::Counter,
        help: "Turns that ran without the boardroom memory, by reason (storage, embedding, timeout).",
    },
    Family {
        name: "conversation_memory_distillations_total",
        kind: Kind::Counter,
        help: "Completed turns distilled into the boardroom memory, by outcome (stored, empty, malformed, conflict, forgotten, failed, shed: too many distilling at once).",
    },
    Family {
        name: "conversation_memory_unfit_facts_total",
        kind: Kind::Counter,
        help: "Facts left out of a memory when it was loaded: embedded with other dimensions than its oldest fact (the embedding model changed).",
    },
    Family {
        name: "conversation_memory_facts_total",
        kind: Kind::Counter,
        help: "Changes of the boardroom memory's facts, by change (added, restated, updated, evicted).",
    },
];

/// Creates the series whose label values are known in advance at zero, so that a rate or a
/// ratio over them exists (and alerts on them can be evaluated) before the first event.
pub fn zero_known_series() {
    for outcome in ["completed", "failed", "replayed"] {
        metrics::counter!("conversation_turns_total", "outcome" => outcome).increment(0);
    }
    for path in ["one_statement", "transaction"] {
        metrics::counter!("conversation_turn_writes_total", "path" => path).increment(0);
    }
    for outcome in [
        "stored",
        "empty",
        "malformed",
        "conflict",
        "forgotten",
        "failed",
        "shed",
    ] {
        metrics::counter!("conversation_memory_distillations_total", "outcome" => outcome)
            .increment(0);
    }
    for reason in ["storage", "embedding", "timeout"] {
        metrics::counter!("conversation_memory_recall_failures_total", "reason" => reason)
            .increment(0);
    }
    for reason in crate::domain::FailureReason::ALL {
        metrics::counter!("conversation_advisor_failures_total", "reason" => format!("{reason:?}"))
            .increment(0);
    }
}

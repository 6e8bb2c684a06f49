//! The conversation service's settings.

use serde::{Deserialize, Serialize};

use super::Listen;

/// The conversation service: its peers, the turn workflow's bounds, state caching and
/// checkpoint retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationConfig {
    /// Where it listens.
    pub listen: Listen,
    /// The session service (`http://host:port`; several are balanced).
    pub session_addresses: Vec<String>,
    /// The LLM gateway.
    pub llm_addresses: Vec<String>,
    /// The model alias of the moderator's synthesis.
    pub moderator_model: String,
    /// The model alias of background summarisation.
    pub summary_model: String,
    /// Sampling temperature of advisors and the moderator (0 makes answers cacheable).
    pub temperature: f32,
    /// Most tokens one advisor answer may generate.
    pub max_answer_tokens: u32,
    /// Advisors streaming at once within one turn.
    pub max_parallel_advisors: usize,
    /// Bound of one advisor's answer (every tool round included).
    pub advisor_timeout_ms: u64,
    /// Bound of a whole turn.
    pub turn_timeout_ms: u64,
    /// The lease a running turn holds on its thread, renewed every third of it while the turn
    /// runs: a turn whose instance died stops blocking its thread after at most this long.
    pub turn_lease_ms: u64,
    /// Turns that may wait for one thread at once (RunTurn with ENQUEUE or INTERRUPT); more
    /// are refused with RESOURCE_EXHAUSTED.
    pub max_queued_turns: u32,
    /// Turns this instance runs at once, at most; more are refused with UNAVAILABLE and
    /// `retry-after`.
    pub max_running_turns: u32,
    /// Turn admission: when the runtime runs ready tasks later than this (the median of an
    /// interval's samples of its scheduling delay), the instance is short of CPU, and the
    /// turns it admits at once are cut to 0.8 of those running (at most once per a turn's
    /// measured duration); while it keeps up and turns are refused, the limit grows by 1/32
    /// an interval (down to 4, up to `max_running_turns`). A turn past the limit is refused
    /// at once (UNAVAILABLE, `retry-after` 1–5 s, longer the larger the share refused),
    /// before it costs anything, so the turns admitted and every other call keep their
    /// normal latency. 0: only `max_running_turns` holds.
    pub turn_admission_target_ms: u64,
    /// How often the turn admission's limit is adjusted (its delay is sampled 10 times in it).
    pub turn_admission_interval_ms: u64,
    /// How long a turn's events stay readable by JoinTurn after its last one (in Redis; in
    /// memory at most a minute, and within `turn_log_memory_bytes`).
    pub turn_log_ttl_ms: u64,
    /// Memory for the events of this instance's running and just-finished turns.
    pub turn_log_memory_bytes: u64,
    /// How long a turn's events are gathered before they are written to Redis in one round
    /// trip while a JoinTurn on another instance follows the turn: that joiner's lag, at most
    /// (one on this instance reads the events in memory, at once).
    pub turn_log_write_ms: u64,
    /// The same while no other instance follows the turn: a JoinTurn elsewhere asks for the
    /// short window over the turn bus and gets what was gathered at once; its lag is this
    /// long only when that request is lost (Redis pub/sub down) or never made (a joiner of
    /// the version before). The last event is written at once either way. 0: `turn_log_write_ms`
    /// always (a write every few events, as before this setting; README, "The turn log
    /// written when followed").
    pub turn_log_idle_write_ms: u64,
    /// DEBATE's rounds of revision when neither the turn nor its boardroom says.
    pub debate_rounds: u32,
    /// Most DEBATE rounds of revision a turn may run (1..=4); a boardroom that asks for more
    /// gets this many, a RunTurn that asks for more is refused.
    pub max_debate_rounds: u32,
    /// Tool rounds per advisor per turn.
    pub max_tool_rounds: u32,
    /// Token budget of one advisor's context: system prompt + summary + recent messages.
    pub context_budget_tokens: u32,
    /// When the messages after the summary exceed this many tokens, the older ones are
    /// folded into the rolling summary in the background.
    pub history_budget_tokens: u32,
    /// Most tokens of the rolling summary.
    pub summary_max_tokens: u32,
    /// Checkpoints kept per thread (fork points are kept as well).
    pub checkpoint_retention: u32,
    /// Hot state and thread lookups.
    pub state_cache: StateCacheConfig,
    /// How long a thread's boardroom and status, looked up in the session service, are reused.
    pub context_ttl_ms: u64,
    /// Largest message content.
    pub max_message_bytes: usize,
    /// Page size when a List request says 0.
    pub default_page_size: u32,
    /// Largest page a List request may ask for.
    pub max_page_size: u32,
    /// The boardroom memory: facts distilled from turns, recalled into advisors' contexts.
    pub memory: BoardroomMemoryConfig,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        Self {
            listen: Listen {
                grpc_addr: ([127, 0, 0, 1], 50052).into(),
                admin_addr: ([127, 0, 0, 1], 9092).into(),
            },
            session_addresses: vec!["http://127.0.0.1:50051".into()],
            llm_addresses: vec!["http://127.0.0.1:50054".into()],
            moderator_model: "mock".into(),
            summary_model: "mock".into(),
            temperature: 0.7,
            max_answer_tokens: 512,
            max_parallel_advisors: 8,
            advisor_timeout_ms: 60_000,
            turn_timeout_ms: 120_000,
            turn_lease_ms: 5_000,
            max_queued_turns: 8,
            max_running_turns: 4_096,
            turn_admission_target_ms: 3,
            turn_admission_interval_ms: 100,
            turn_log_ttl_ms: 10 * 60 * 1000,
            turn_log_memory_bytes: 2 * 1024 * 1024,
            turn_log_write_ms: 5,
            turn_log_idle_write_ms: 1_000,
            debate_rounds: 2,
            max_debate_rounds: 4,
            max_tool_rounds: 2,
            context_budget_tokens: 3_000,
            history_budget_tokens: 6_000,
            summary_max_tokens: 400,
            checkpoint_retention: 10,
            state_cache: StateCacheConfig::default(),
            context_ttl_ms: 5_000,
            max_message_bytes: 32 * 1024,
            default_page_size: 50,
            max_page_size: 1000,
            memory: BoardroomMemoryConfig::default(),
        }
    }
}

impl ConversationConfig {
    /// Cross-field rules.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return Err(
                "key `conversation.default_page_size` must be in 1..=`max_page_size`".into(),
            );
        }
        if self.max_parallel_advisors == 0 || self.checkpoint_retention == 0 {
            return Err(
                "keys `conversation.max_parallel_advisors` and `checkpoint_retention` must be > 0"
                    .into(),
            );
        }
        if self.advisor_timeout_ms == 0 || self.advisor_timeout_ms > self.turn_timeout_ms {
            return Err(
                "key `conversation.advisor_timeout_ms` must be in 1..=`turn_timeout_ms`".into(),
            );
        }
        if self.turn_lease_ms < 300 {
            return Err("key `conversation.turn_lease_ms` must be >= 300".into());
        }
        if self.max_running_turns == 0
            || self.turn_admission_target_ms > 10_000
            || !(10..=10_000).contains(&self.turn_admission_interval_ms)
        {
            return Err(
                "keys `conversation.max_running_turns` must be > 0, `turn_admission_target_ms` in 0..=10000 and `turn_admission_interval_ms` in 10..=10000"
                    .into(),
            );
        }
        if self.turn_log_write_ms > 1_000 {
            return Err("key `conversation.turn_log_write_ms` must be <= 1000".into());
        }
        if self.turn_log_idle_write_ms > 60_000
            || (self.turn_log_idle_write_ms != 0
                && self.turn_log_idle_write_ms < self.turn_log_write_ms)
        {
            return Err(
                "key `conversation.turn_log_idle_write_ms` must be 0 or in `turn_log_write_ms`..=60000"
                    .into(),
            );
        }
        if self.max_queued_turns == 0 || self.turn_log_ttl_ms < 1_000 {
            return Err(
                "keys `conversation.max_queued_turns` must be > 0 and `turn_log_ttl_ms` >= 1000"
                    .into(),
            );
        }
        if !(1..=4).contains(&self.max_debate_rounds)
            || !(1..=self.max_debate_rounds).contains(&self.debate_rounds)
        {
            return Err(
                "keys `conversation.max_debate_rounds` must be in 1..=4 and `debate_rounds` in 1..=`max_debate_rounds`"
                    .into(),
            );
        }
        if self.history_budget_tokens < self.context_budget_tokens / 2 {
            return Err(
                "key `conversation.history_budget_tokens` must be >= half of `context_budget_tokens`"
                    .into(),
            );
        }
        self.memory.check()
    }
}

/// The boardroom memory: after a completed turn the summary model distils durable facts from
/// it into a memory per (user, boardroom); a turn's advisors get the facts most similar to
/// its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoardroomMemoryConfig {
    /// Off: nothing is distilled or recalled (what is stored stays, and stays listable).
    pub enabled: bool,
    /// The embedding model alias (the gateway's Embed) for facts and turns' messages.
    pub embedding_model: String,
    /// Most facts kept per (user, boardroom); beyond it the least used (then the oldest) go.
    pub max_facts: u32,
    /// Most facts distilled from one turn.
    pub max_facts_per_turn: u32,
    /// Longest fact kept, in bytes (longer ones are dropped, not cut).
    pub max_fact_bytes: usize,
    /// Most facts recalled into a turn's contexts.
    pub recall_count: u32,
    /// Least cosine similarity of a recalled fact to the turn's message.
    pub min_similarity: f32,
    /// Least cosine similarity at which a new fact is compared with a kept one as a
    /// restatement or update of it (then it replaces it when both speak of the same thing).
    pub merge_similarity: f32,
    /// Share of `context_budget_tokens` the recalled facts may take.
    pub budget_share: f32,
    /// Bound of the recall's embedding call; past it the turn runs without memories.
    pub recall_timeout_ms: u64,
    /// In-process bound of the memories cached for recall, in bytes.
    pub cache_max_bytes: u64,
    /// Distillations running at once; past it a completed turn is not distilled (counted as
    /// `shed`).
    pub max_concurrent_distillations: u32,
}

impl Default for BoardroomMemoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            embedding_model: "mock".into(),
            max_facts: 1_000,
            max_facts_per_turn: 5,
            max_fact_bytes: 400,
            recall_count: 5,
            min_similarity: 0.25,
            merge_similarity: 0.75,
            budget_share: 0.15,
            recall_timeout_ms: 500,
            cache_max_bytes: 32 * 1024 * 1024,
            max_concurrent_distillations: 64,
        }
    }
}

impl BoardroomMemoryConfig {
    fn check(&self) -> Result<(), String> {
        if self.max_facts == 0 || self.max_facts > 100_000 || self.max_facts_per_turn == 0 {
            return Err(
                "keys `conversation.memory.max_facts` must be in 1..=100000 and `max_facts_per_turn` > 0"
                    .into(),
            );
        }
        let unit = 0.0..=1.0;
        let share = self.budget_share > 0.0 && self.budget_share <= 0.5;
        if !(unit.contains(&self.min_similarity) && unit.contains(&self.merge_similarity) && share)
        {
            return Err(
                "keys `conversation.memory.min_similarity` and `merge_similarity` must be in 0..=1, `budget_share` in (0, 0.5]"
                    .into(),
            );
        }
        if self.max_fact_bytes < 16
            || self.recall_timeout_ms == 0
            || self.embedding_model.is_empty()
        {
            return Err(
                "keys `conversation.memory.max_fact_bytes` must be >= 16, `recall_timeout_ms` > 0, `embedding_model` set"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The hot state cache: L1 in the instance, Redis when configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateCacheConfig {
    /// L1 bound, in bytes of state.
    pub max_bytes: u64,
    /// Bound of the threads' recent messages kept in memory (what advisors' contexts read).
    pub recent_max_bytes: u64,
    /// Time to live of a state in Redis and L1.
    pub ttl_ms: u64,
    /// An L1 state untouched this long leaves memory.
    pub idle_ms: u64,
}

impl Default for StateCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
            recent_max_bytes: 10 * 1024 * 1024,
            ttl_ms: 60 * 60 * 1000,
            idle_ms: 10 * 60 * 1000,
        }
    }
}

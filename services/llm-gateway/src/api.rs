//! The gateway as its front doors call it (the gRPC API and the OpenAI-compatible HTTP API
//! share this one path): a request's bounds, admission against the caller's limits, the call,
//! its accounting; a streamed answer's text batched per flush window, and a stream that breaks
//! reported to the deployment's breaker. The doors only convert.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boardroom_runtime::status::Violations;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::domain::{
    CacheOutcome, ChatAnswer, ChatRequest, Chunk, Completion, Embeddings, ToolCall, Usage,
};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::limits::{Admission, Limiter};
use crate::provider::estimate_tokens;

/// Bounds of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most messages.
    pub max_messages: usize,
    /// Most bytes of message text.
    pub max_prompt_bytes: usize,
}

/// One event of a streamed answer.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// Text (after the first, the text of one flush window).
    Delta(String),
    /// A complete tool call.
    ToolCall(ToolCall),
    /// The end: the whole answer (its text already sent in deltas), usage and cost.
    Done(ChatAnswer),
    /// The stream broke after it started: the caller got part of an answer, not a truncated
    /// success.
    Failed(GatewayError),
}

/// A streamed answer on its way: where it comes from, and its events.
#[derive(Debug)]
pub struct ChatEvents {
    /// The deployment serving it.
    pub deployment: String,
    /// How it was obtained.
    pub cache: CacheOutcome,
    /// The events; the last is `Done` or `Failed`. Dropping it cancels the upstream call.
    pub events: mpsc::Receiver<StreamEvent>,
}

/// The gateway's calls, for every front door.
#[derive(Clone)]
pub struct Api {
    gateway: Arc<Gateway>,
    limiter: Arc<Limiter>,
    limits: RequestLimits,
    stream_flush: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// Adds the violations of the bounds every front door shares (its own field names are the
/// same in both APIs): the model, the messages' count and size, the sampling parameters.
pub fn check_bounds(request: &ChatRequest, limits: RequestLimits, v: &mut Violations) {
    if request.model.is_empty() {
        v.add("model", "must not be empty");
    }
    if request.messages.is_empty() {
        v.add("messages", "must hold at least one message");
    } else if request.messages.len() > limits.max_messages {
        v.add(
            "messages",
            format!(
                "{} messages; the limit llm.max_messages is {}",
                request.messages.len(),
                limits.max_messages
            ),
        );
    }
    let bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
    if bytes > limits.max_prompt_bytes {
        v.add(
            "messages",
            format!(
                "{bytes} bytes of text; the limit llm.max_prompt_bytes is {}",
                limits.max_prompt_bytes
            ),
        );
    }
    let p = &request.params;
    if let Some(t) = p.temperature
        && !(0.0..=2.0).contains(&t)
    {
        v.add("temperature", "must be within 0 and 2");
    }
    if let Some(t) = p.top_p
        && !(t > 0.0 && t <= 1.0)
    {
        v.add("top_p", "must be within (0, 1]");
    }
    if p.max_tokens == Some(0) {
        v.add("max_tokens", "must be > 0 when set");
    }
    if p.stop.len() > 4 {
        v.add("stop", "at most 4 stop sequences");
    }
}

impl Api {
    /// Serves `gateway`; streamed text after the first delta is sent at most every
    /// `stream_flush` (zero: every delta as it comes).
    pub fn new(
        gateway: Arc<Gateway>,
        limiter: Arc<Limiter>,
        limits: RequestLimits,
        stream_flush: Duration,
    ) -> Self {
        Self {
            gateway,
            limiter,
            limits,
            stream_flush,
        }
    }

    /// The bounds requests are checked against.
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The gateway behind it.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Reserves the call's tokens against the caller's budget.
    fn admit(&self, caller: &str, chat: &ChatRequest) -> Result<Admission, GatewayError> {
        let prompt: u32 = chat
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum();
        self.limiter.admit(
            caller,
            self.limiter.reservation(prompt, chat.params.max_tokens),
        )
    }

    /// A complete answer.
    pub async fn chat(
        &self,
        chat: ChatRequest,
        deadline: Instant,
        caller: &str,
    ) -> Result<ChatAnswer, GatewayError> {
        let admission = self.admit(caller, &chat)?;
        let answer = self.gateway.chat(chat, deadline, caller).await;
        admission.settle(match &answer {
            Ok(a) if a.cache == CacheOutcome::Miss => a.completion.usage.total(),
            _ => 0,
        });
        answer
    }

    /// An answer as it is generated. Resolves when its first chunk is in (retries and
    /// fallback are over by then); the events follow on a task owned by the call, which ends
    /// when the caller drops the receiver (the upstream call is cancelled with it), at the
    /// deadline, or at the end of the answer.
    pub async fn chat_stream(
        &self,
        chat: ChatRequest,
        deadline: Instant,
        caller: &str,
    ) -> Result<ChatEvents, GatewayError> {
        let admission = self.admit(caller, &chat)?;
        let prompt_tokens = chat.prompt_tokens();
        let answer = match self.gateway.chat_stream(chat, deadline).await {
            Ok(answer) => answer,
            Err(err) => {
                admission.settle(0);
                return Err(err);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let events = ChatEvents {
            deployment: answer.meta.deployment.clone(),
            cache: answer.meta.cache,
            events: rx,
        };
        let relay = Relay {
            gateway: self.gateway.clone(),
            tx,
            flush_every: self.stream_flush,
            caller: caller.to_owned(),
            admission,
            prompt_tokens,
        };
        // Owned by the call: see above.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(relay.run(answer, deadline).in_current_span());
        Ok(events)
    }

    /// Embeddings of `inputs`, in order, and the deployment that made them.
    pub async fn embed(
        &self,
        model: &str,
        inputs: Vec<String>,
        deadline: Instant,
        caller: &str,
    ) -> Result<(Embeddings, String), GatewayError> {
        let mut violations = Violations::default();
        if model.is_empty() {
            violations.add("model", "must not be empty");
        }
        if inputs.is_empty() {
            violations.add("input", "must hold at least one text");
        }
        if inputs.iter().map(String::len).sum::<usize>() > self.limits.max_prompt_bytes {
            violations.add(
                "input",
                format!(
                    "over the limit llm.max_prompt_bytes ({})",
                    self.limits.max_prompt_bytes
                ),
            );
        }
        violations.finish(())?;
        let prompt: u32 = inputs.iter().map(|t| estimate_tokens(t)).sum();
        let admission = self.limiter.admit(caller, u64::from(prompt))?;
        let embedded = self.gateway.embed(model, inputs, deadline, caller).await;
        admission.settle(
            embedded
                .as_ref()
                .map_or(0, |(e, _)| u64::from(e.usage.input_tokens)),
        );
        embedded
    }
}

/// The first tick after `at` of a clock that ticks every `every` for the whole process. The
/// streams' flushes fall on its ticks, so the messages of concurrent streams (the advisors of
/// a turn, and every turn's) go out together: each hop after the gateway wakes once for the
/// lot and its connection writes them in one system call, instead of once for each stream at
/// its own phase. A stream still sends at most one message a window, each at most `every`
/// after its text came. A zero `every` is `at` itself.
fn next_tick(at: tokio::time::Instant, every: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let every_ns = every.as_nanos();
    if every_ns == 0 {
        return at;
    }
    let epoch = *EPOCH.get_or_init(|| at);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let ticks = since / every_ns + 1;
    let offset = u64::try_from(ticks * every_ns).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(offset)
}

/// A streamed answer's way from the upstream to the caller.
struct Relay {
    gateway: Arc<Gateway>,
    tx: mpsc::Sender<StreamEvent>,
    flush_every: Duration,
    caller: String,
    admission: Admission,
    /// The request's prompt, estimated: for a stream that ends without usage.
    prompt_tokens: u32,
}

impl Relay {
    /// Sends the text held back as one delta (nothing when none is); `false` when the caller
    /// is gone.
    async fn flush(&self, held: &mut String, last_sent: &mut Option<tokio::time::Instant>) -> bool {
        if held.is_empty() {
            return true;
        }
        *last_sent = Some(tokio::time::Instant::now());
        self.tx
            .send(StreamEvent::Delta(std::mem::take(held)))
            .await
            .is_ok()
    }

    async fn run(self, answer: crate::gateway::AnswerStream, deadline: Instant) {
        let meta = answer.meta.clone();
        let first_at = Instant::now();
        let mut sent = (String::new(), Vec::new());
        let Some(completion) = self.relay(answer, deadline, &mut sent).await else {
            // Broken, past the deadline, or left by its caller: the provider bills what it
            // generated, so an estimate of it is counted.
            let usage = Usage::estimated(self.prompt_tokens, &sent.0, &sent.1);
            let used = if meta.cache == CacheOutcome::Miss {
                self.gateway.account_unfinished(&meta, usage, &self.caller);
                usage.total()
            } else {
                0
            };
            self.admission.settle(used);
            return;
        };
        let mut completion = completion;
        if meta.cache == CacheOutcome::Miss && completion.usage == Usage::default() {
            // An upstream that ignores `include_usage`.
            completion.usage = Usage::estimated(
                self.prompt_tokens,
                &completion.content,
                &completion.tool_calls,
            );
        }
        let cost_micros = self
            .gateway
            .finish_stream(&meta, completion.clone(), &self.caller, first_at.elapsed())
            .await;
        self.admission.settle(if meta.cache == CacheOutcome::Miss {
            completion.usage.total()
        } else {
            0
        });
        let _ = self
            .tx
            .send(StreamEvent::Done(ChatAnswer {
                completion,
                deployment: meta.deployment.clone(),
                cache: meta.cache,
                cost_micros,
            }))
            .await;
    }

    /// Relays the answer's text and tool calls (kept in `sent`) until its end: the completion,
    /// or `None` when it broke (the caller told) or the caller left.
    async fn relay(
        &self,
        answer: crate::gateway::AnswerStream,
        deadline: Instant,
        sent: &mut (String, Vec<ToolCall>),
    ) -> Option<Completion> {
        let (mut chunks, meta) = (answer.chunks, answer.meta);
        let (content, calls) = (&mut sent.0, &mut sent.1);
        // Text held back until the tick of the flush clock after the last delta sent: one
        // message (one write, one wake-up at each hop) for the tokens of a window, and every
        // stream of the process flushing at the same instants (see `next_tick`). The first
        // delta goes at once, so the time to the first token is the model's.
        let mut held = String::new();
        let mut last_sent: Option<tokio::time::Instant> = None;
        // The caller's leaving, the deadline and the flush clock are each one future for the
        // whole stream, not one a token: every token a model streams wakes this loop, and a
        // timer or a watch made afresh each time is a registration and a cancellation per
        // token at the timer wheel or the channel's lock.
        let closed = self.tx.closed();
        let past_deadline = tokio::time::sleep_until(deadline.into());
        let flush = tokio::time::sleep_until(deadline.into());
        tokio::pin!(closed, past_deadline, flush);
        loop {
            let flush_at = last_sent.map(|at| next_tick(at, self.flush_every));
            if let Some(at) = flush_at.filter(|at| *at != flush.deadline()) {
                flush.as_mut().reset(at);
            }
            // Biased: text due goes before the next token, and a token already there before
            // the deadline's verdict, as a timeout around the read would have it.
            let next: Result<_, ()> = tokio::select! {
                biased;
                _ = &mut closed => return None,
                _ = &mut flush, if flush_at.is_some() && !held.is_empty() => {
                    if !self.flush(&mut held, &mut last_sent).await {
                        return None;
                    }
                    continue;
                }
                next = chunks.next() => Ok(next),
                _ = &mut past_deadline => Err(()),
            };
            if let Ok(Some(Ok(Chunk::Delta(text)))) = next {
                content.push_str(&text);
                held.push_str(&text);
                let due = flush_at.is_none_or(|at| tokio::time::Instant::now() >= at);
                if due && !self.flush(&mut held, &mut last_sent).await {
                    return None;
                }
                continue;
            }
            // Anything else goes after the text held back.
            if !self.flush(&mut held, &mut last_sent).await {
                return None;
            }
            let event = match next {
                // Handled above.
                Ok(Some(Ok(Chunk::Delta(_)))) => continue,
                Err(_) => StreamEvent::Failed(GatewayError::DeadlineExceeded),
                Ok(None) => StreamEvent::Failed(GatewayError::Unavailable {
                    message: "the upstream stream ended without a finish".into(),
                    retry_after: None,
                }),
                Ok(Some(Err(err))) => {
                    self.gateway.stream_broke(&meta);
                    StreamEvent::Failed(GatewayError::Unavailable {
                        message: format!("the upstream stream broke: {err}"),
                        retry_after: None,
                    })
                }
                Ok(Some(Ok(Chunk::ToolCall(call)))) => {
                    calls.push(call.clone());
                    StreamEvent::ToolCall(call)
                }
                Ok(Some(Ok(Chunk::Done {
                    finish_reason,
                    usage,
                    model,
                }))) => {
                    return Some(Completion {
                        content: std::mem::take(content),
                        tool_calls: std::mem::take(calls),
                        finish_reason,
                        usage,
                        model,
                    });
                }
            };
            let failed = matches!(event, StreamEvent::Failed(_));
            if self.tx.send(event).await.is_err() || failed {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_flush_on_the_ticks_of_one_clock_whatever_their_phase() {
        let every = Duration::from_millis(50);
        let t0 = tokio::time::Instant::now();
        let first = next_tick(t0, every);
        // Two streams whose last deltas went out at different instants of one window flush
        // together, at most a window after.
        let a = next_tick(first + Duration::from_millis(3), every);
        let b = next_tick(first + Duration::from_millis(41), every);
        assert_eq!(a, b);
        assert_eq!(a, first + every);
        // Exactly on a tick: the next one.
        assert_eq!(next_tick(a, every), a + every);
        // Every tick is a whole number of windows from the first.
        let later = next_tick(first + Duration::from_millis(1234), every);
        assert_eq!(later.duration_since(first).as_nanos() % every.as_nanos(), 0);
        assert!(later > first + Duration::from_millis(1234));
        assert!(later <= first + Duration::from_millis(1234) + every);
        // No window: at once.
        assert_eq!(next_tick(a, Duration::ZERO), a);
    }
}

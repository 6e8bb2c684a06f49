//! `boardroom load --scenario users`: simulated users of the whole suite. Each user, started
//! along a ramp, opens a session and a thread, then loops until the run ends: lists its
//! sessions and threads, runs a turn (streamed to the end), reads the thread's messages and
//! state, opens another thread every fifth round, and thinks. Users call through the services'
//! own client (several hosts balanced and health-watched) and retry as the contract allows;
//! once the run is over, every write a user was told succeeded is read back. Every step is
//! timed and its failures (after retries) and retried attempts counted by code and by second;
//! the server processes named by `--pid` are sampled for resident memory and CPU. Prints a JSON
//! report and writes an HTML one with `--html`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boardroom_proto::conversation::v1 as conv;
use boardroom_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use boardroom_proto::session::v1 as sess;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_runtime::client::{BalancedChannel, ChannelFactory};
use boardroom_runtime::config::ClientConfig;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// What a users run is asked to do.
#[derive(Debug, Clone)]
pub struct UsersPlan {
    pub session_host: String,
    pub conversation_host: String,
    pub users: usize,
    pub duration: Duration,
    pub ramp: Duration,
    pub think: Duration,
    pub connections: usize,
    pub pids: Vec<(String, u32)>,
    pub html: Option<PathBuf>,
    pub surge: Surge,
}

/// More users for a while: they arrive at `at`, over the first quarter of `lasts`, and each
/// leaves once its round ends after `at + lasts`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Surge {
    pub users: usize,
    pub at: Duration,
    pub lasts: Duration,
}

/// Per-step latencies and failures; failed attempts that were retried, and every failure by
/// the second of the run it happened in.
struct Steps {
    started: Instant,
    latencies: BTreeMap<&'static str, Histogram<u64>>,
    failures: BTreeMap<&'static str, BTreeMap<String, u64>>,
    retried: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// Second of the run → (attempts retried, calls failed).
    timeline: BTreeMap<u64, (u64, u64)>,
    /// Second of the run → the latencies (µs) of the calls that succeeded in it, by step.
    per_second: BTreeMap<u64, BTreeMap<&'static str, Vec<u32>>>,
    /// Advisors that failed within turns that completed without them, by reason.
    advisor_failures: BTreeMap<String, u64>,
    /// Second of the run → calls that succeeded after one or more retried attempts.
    recovered: BTreeMap<u64, u64>,
    /// Second of the run → every attempt's own time (µs, not counting earlier attempts or
    /// waits), by step and by how the server took it: what an overloaded server's admitted
    /// calls cost, and how fast it refuses the rest.
    attempts: BTreeMap<u64, BTreeMap<&'static str, Attempts>>,
}

/// One step's attempts in one second, by how the server took them.
#[derive(Debug, Default, Clone)]
struct Attempts {
    /// Answered with success.
    admitted: Vec<u32>,
    /// Refused as overload: UNAVAILABLE with a `retry-after`.
    refused: Vec<u32>,
}

impl Attempts {
    fn extend(&mut self, other: &Attempts) {
        self.admitted.extend(&other.admitted);
        self.refused.extend(&other.refused);
    }

    /// The admitted attempts' count and p99, the refused ones' count, p99 and share.
    fn report(&self) -> Value {
        let all = self.admitted.len() + self.refused.len();
        json!({
            "admitted": self.admitted.len(),
            "admitted_p99_ms": quantile_ms(&self.admitted, 0.99),
            "refused": self.refused.len(),
            "refused_p99_ms": quantile_ms(&self.refused, 0.99),
            "refused_share": if all == 0 { 0.0 } else { self.refused.len() as f64 / all as f64 },
        })
    }
}

type Shared = Arc<Mutex<Steps>>;

/// What a call's failure was, and whether a well-behaved client tries it again.
#[derive(Debug)]
struct Failure {
    label: String,
    retryable: bool,
    /// How long the server asked the caller to wait before trying again (`retry-after`).
    retry_after: Option<Duration>,
}

impl From<tonic::Status> for Failure {
    /// UNAVAILABLE is the contract's "nothing was done, or the call is idempotent: retry".
    fn from(status: tonic::Status) -> Self {
        Self {
            label: format!("{:?}", status.code()),
            retryable: status.code() == tonic::Code::Unavailable,
            retry_after: status
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }
}

/// How long a call is retried (from its first attempt) before it counts as failed.
const RETRY_BUDGET: Duration = Duration::from_secs(15);

fn record(steps: &Shared, step: &'static str, started: Instant, result: Result<bool, &Failure>) {
    let Ok(mut steps) = steps.lock() else {
        return;
    };
    match result {
        Ok(retried) => {
            if retried {
                let second = steps.started.elapsed().as_secs();
                *steps.recovered.entry(second).or_default() += 1;
            }
            let micros = started.elapsed().as_micros().max(1) as u64;
            steps
                .latencies
                .entry(step)
                .or_insert_with(|| {
                    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
                })
                .record(micros)
                .ok();
            let second = steps.started.elapsed().as_secs();
            steps
                .per_second
                .entry(second)
                .or_default()
                .entry(step)
                .or_default()
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
        Err(failure) => {
            *steps
                .failures
                .entry(step)
                .or_default()
                .entry(failure.label.clone())
                .or_default() += 1;
            let second = steps.started.elapsed().as_secs();
            steps.timeline.entry(second).or_default().1 += 1;
        }
    }
}

/// Notes one attempt of `step` that took `took`: admitted (it succeeded), refused (an
/// overloaded server's UNAVAILABLE with `retry-after`), or neither (another failure).
fn record_attempt(
    steps: &Shared,
    step: &'static str,
    took: Duration,
    result: Result<(), &Failure>,
) {
    let refused = match result {
        Ok(()) => false,
        Err(f) if f.label == "Unavailable" && f.retry_after.is_some() => true,
        Err(_) => return,
    };
    let Ok(mut steps) = steps.lock() else {
        return;
    };
    let second = steps.started.elapsed().as_secs();
    let micros = u32::try_from(took.as_micros().max(1)).unwrap_or(u32::MAX);
    let attempts = steps
        .attempts
        .entry(second)
        .or_default()
        .entry(step)
        .or_default();
    if refused {
        attempts.refused.push(micros);
    } else {
        attempts.admitted.push(micros);
    }
}

fn record_retry(steps: &Shared, step: &'static str, failure: &Failure) {
    let Ok(mut steps) = steps.lock() else {
        return;
    };
    *steps
        .retried
        .entry(step)
        .or_default()
        .entry(failure.label.clone())
        .or_default() += 1;
    let second = steps.started.elapsed().as_secs();
    steps.timeline.entry(second).or_default().0 += 1;
}

/// Runs `call` as a well-behaved client does, timing it as `step` from its first attempt: a
/// retryable failure is tried again (the same request, so the same request id) after a backoff
/// from 50 ms doubling to 1 s with jitter, or after the server's `retry-after` when it sent one
/// (an overloaded server's refusal), within [`RETRY_BUDGET`]. `None` when it failed.
async fn step<T, F, Fut>(steps: &Shared, name: &'static str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut retried = false;
    loop {
        let attempt = Instant::now();
        let result = call().await;
        record_attempt(steps, name, attempt.elapsed(), result.as_ref().map(|_| ()));
        match result {
            Ok(value) => {
                record(steps, name, started, Ok(retried));
                return Some(value);
            }
            // ABORTED after a retryable failure: the thread may be held by this request's own
            // earlier attempt, whose instance died holding its lease (free within a lease).
            Err(failure)
                if (failure.retryable || (retried && failure.label == "Aborted"))
                    && started.elapsed() + backoff < RETRY_BUDGET =>
            {
                retried = true;
                record_retry(steps, name, &failure);
                // Full jitter from the clock's low bits: retries of many users spread out.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
                let wait = failure
                    .retry_after
                    .map_or(backoff.mul_f64(jitter), |asked| asked.mul_f64(0.5 + jitter));
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(failure) => {
                record(steps, name, started, Err(&failure));
                return None;
            }
        }
    }
}

/// A channel through the services' own client (balanced over every address given, comma
/// separated, each followed by its health), with the generator's deadlines.
fn connect(hosts: &str) -> anyhow::Result<BalancedChannel> {
    let factory = ChannelFactory::new(ClientConfig {
        connect_timeout_ms: 5_000,
        request_timeout_ms: 60_000,
        resolve_interval_ms: 1_000,
        ..ClientConfig::default()
    });
    let addresses: Vec<String> = hosts
        .split(',')
        .map(|h| format!("http://{}", h.trim()))
        .collect();
    factory
        .channel(&addresses)
        .map_err(|e| anyhow::anyhow!("connecting to {hosts}: {e}"))
}

/// A RunTurn streamed to its end: the turn must complete. A turn that failed without storing
/// anything for a passing reason (storage or model unavailable) may be retried with its
/// request id; one that completed in an earlier attempt is replayed, not run again.
async fn run_turn(
    mut client: ConversationServiceClient<BalancedChannel>,
    request: conv::RunTurnRequest,
    steps: Shared,
) -> Result<conv::TurnCompleted, Failure> {
    let mut stream = client.run_turn(request).await?.into_inner();
    let mut advisors_failed = Vec::new();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(conv::run_turn_response::Event::AdvisorFailed(failed)) => {
                let reason = conv::FailureReason::try_from(failed.reason)
                    .unwrap_or(conv::FailureReason::Unspecified);
                advisors_failed.push(reason.as_str_name().to_owned());
            }
            Some(conv::run_turn_response::Event::TurnCompleted(completed)) => {
                if let Ok(mut steps) = steps.lock() {
                    for reason in advisors_failed {
                        *steps.advisor_failures.entry(reason).or_default() += 1;
                    }
                }
                return Ok(completed);
            }
            Some(conv::run_turn_response::Event::TurnFailed(failed)) => {
                let reason = conv::FailureReason::try_from(failed.reason)
                    .unwrap_or(conv::FailureReason::Unspecified);
                return Err(Failure {
                    label: format!("TurnFailed:{}", reason.as_str_name()),
                    retryable: matches!(
                        reason,
                        conv::FailureReason::Storage
                            | conv::FailureReason::Upstream
                            | conv::FailureReason::NoAnswer
                    ),
                    retry_after: None,
                });
            }
            _ => {}
        }
    }
    Err(Failure {
        label: "stream ended without TurnCompleted".into(),
        retryable: false,
        retry_after: None,
    })
}

/// The writes a user was told succeeded, checked at the end of the run.
#[derive(Default)]
struct Ledger {
    session: Option<String>,
    threads: Vec<String>,
    turns: BTreeMap<String, Vec<conv::TurnCompleted>>,
    /// The newest consistency token the user's writes were answered with (`x-boardroom-lsn`).
    token: Option<tonic::metadata::AsciiMetadataValue>,
    /// Lists read with that token, and those that missed the user's own write.
    own_writes_checked: u64,
    own_writes_missed: u64,
}

impl Ledger {
    /// Keeps the token a write was answered with (the newest: tokens only grow per user).
    fn keep_token(&mut self, metadata: &tonic::metadata::MetadataMap) {
        if let Some(token) = metadata.get(boardroom_runtime::consistency::HEADER) {
            self.token = Some(token.clone());
        }
    }

    /// `message` as a request carrying the user's token, if any.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(boardroom_runtime::consistency::HEADER, token.clone());
        }
        request
    }

    /// A list read after the user's own write: it must hold it.
    fn saw_own_write(&mut self, found: bool) {
        self.own_writes_checked += 1;
        self.own_writes_missed += u64::from(!found);
    }
}

/// What the end-of-run check found, summed over users.
#[derive(Debug, Default, Clone, Copy)]
struct Verified {
    sessions: u64,
    threads: u64,
    turns: u64,
    lost_sessions: u64,
    lost_threads: u64,
    lost_turns: u64,
    /// Turns stored whose caller was never told (its retries ran out after the commit).
    unacknowledged_turns: u64,
    /// Checks that could not be made (the read failed).
    unverified: u64,
    /// Lists read with the token of the user's own write, and those that missed it.
    own_writes_checked: u64,
    own_writes_missed: u64,
}

impl Verified {
    fn add(&mut self, other: &Verified) {
        self.sessions += other.sessions;
        self.threads += other.threads;
        self.turns += other.turns;
        self.lost_sessions += other.lost_sessions;
        self.lost_threads += other.lost_threads;
        self.lost_turns += other.lost_turns;
        self.unacknowledged_turns += other.unacknowledged_turns;
        self.unverified += other.unverified;
        self.own_writes_checked += other.own_writes_checked;
        self.own_writes_missed += other.own_writes_missed;
    }
}

struct User {
    index: usize,
    boardroom_id: String,
    sessions: SessionServiceClient<BalancedChannel>,
    conversation: ConversationServiceClient<BalancedChannel>,
    steps: Shared,
    think: Duration,
    until: Instant,
}

impl User {
    async fn run(self, checks: Arc<tokio::sync::Semaphore>) -> Verified {
        let mut ledger = Ledger::default();
        self.act(&mut ledger).await;
        // Checked once the run is over (and any fault long past), a few users at a time.
        let _permit = checks.acquire_owned().await.ok();
        self.verify(&ledger).await
    }

    async fn act(&self, ledger: &mut Ledger) {
        let user_id = format!("load-user-{}-{}", self.index, uuid_like());
        let create = sess::CreateSessionRequest {
            boardroom_id: self.boardroom_id.clone(),
            user_id: user_id.clone(),
            title: "load".into(),
            request_id: uuid_like(),
        };
        let Some((metadata, session)) = step(&self.steps, "CreateSession", || {
            let (mut client, request) = (self.sessions.clone(), create.clone());
            async move {
                let response = client.create_session(request).await?;
                let metadata = response.metadata().clone();
                Ok((metadata, response.into_inner().session))
            }
        })
        .await
        .and_then(|(m, s)| Some((m, s?))) else {
            return;
        };
        ledger.keep_token(&metadata);
        ledger.session = Some(session.id.clone());
        let mut thread: Option<sess::Thread> = None;
        let mut round = 0u64;
        while Instant::now() < self.until {
            if thread.is_none() || round % 5 == 4 {
                let create = sess::CreateThreadRequest {
                    session_id: session.id.clone(),
                    thread_type: sess::ThreadType::Main as i32,
                    title: format!("thread {round}"),
                    request_id: uuid_like(),
                };
                if let Some((metadata, created)) = step(&self.steps, "CreateThread", || {
                    let (mut client, request) = (self.sessions.clone(), create.clone());
                    async move {
                        let response = client.create_thread(request).await?;
                        let metadata = response.metadata().clone();
                        Ok((metadata, response.into_inner().thread))
                    }
                })
                .await
                .and_then(|(m, t)| Some((m, t?)))
                {
                    ledger.keep_token(&metadata);
                    ledger.threads.push(created.id.clone());
                    thread = Some(created);
                }
            }
            let Some(current) = thread.clone() else {
                return;
            };
            let list_sessions = sess::ListSessionsRequest {
                user_id: user_id.clone(),
                page_size: 20,
                ..sess::ListSessionsRequest::default()
            };
            let listed = step(&self.steps, "ListSessions", || {
                let (mut client, request) =
                    (self.sessions.clone(), ledger.request(list_sessions.clone()));
                async move { Ok(client.list_sessions(request).await?.into_inner()) }
            })
            .await;
            if let Some(listed) = listed
                && ledger.token.is_some()
            {
                ledger.saw_own_write(listed.sessions.iter().any(|s| s.id == session.id));
            }
            let list_threads = sess::ListThreadsRequest {
                session_id: session.id.clone(),
                page_size: 20,
                ..sess::ListThreadsRequest::default()
            };
            let listed = step(&self.steps, "ListThreads", || {
                let (mut client, request) =
                    (self.sessions.clone(), ledger.request(list_threads.clone()));
                async move { Ok(client.list_threads(request).await?.into_inner()) }
            })
            .await;
            // The newest thread, on the first page while the session has at most a page.
            if let Some(listed) = listed
                && ledger.token.is_some()
                && ledger.threads.len() <= 20
            {
                ledger.saw_own_write(listed.threads.iter().any(|t| t.id == current.id));
            }
            step(&self.steps, "GetSession", || {
                let mut client = self.sessions.clone();
                let request = sess::GetSessionRequest {
                    id: session.id.clone(),
                };
                async move { Ok(client.get_session(request).await?) }
            })
            .await;
            let turn = conv::RunTurnRequest {
                thread_id: current.id.clone(),
                content: format!("Round {round}: what should we do next?"),
                author: "load".into(),
                request_id: uuid_like(),
                ..conv::RunTurnRequest::default()
            };
            if let Some(completed) = step(&self.steps, "RunTurn", || {
                run_turn(self.conversation.clone(), turn.clone(), self.steps.clone())
            })
            .await
            {
                // A stream answers with its headers before the turn is stored: the turn's
                // consistency token comes in TurnCompleted.
                if let Ok(token) = completed.commit_position.parse() {
                    ledger.token = Some(token);
                }
                ledger
                    .turns
                    .entry(current.id.clone())
                    .or_default()
                    .push(completed);
            }
            let list_messages = conv::ListMessagesRequest {
                thread_id: current.id.clone(),
                direction: conv::Direction::Backward as i32,
                page_size: 20,
                page_token: String::new(),
            };
            step(&self.steps, "ListMessages", || {
                let (mut client, request) = (self.conversation.clone(), list_messages.clone());
                async move { Ok(client.list_messages(request).await?) }
            })
            .await;
            step(&self.steps, "GetState", || {
                let mut client = self.conversation.clone();
                let request = conv::GetStateRequest {
                    thread_id: current.id.clone(),
                };
                async move { Ok(client.get_state(request).await?) }
            })
            .await;
            round += 1;
            // Never past the end of the run.
            tokio::time::sleep(
                self.think
                    .min(self.until.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// Reads back every write the user was told succeeded: its session, its threads, and
    /// every seq of every completed turn (and a state at least as new as the turn's).
    async fn verify(&self, ledger: &Ledger) -> Verified {
        let mut verified = Verified {
            own_writes_checked: ledger.own_writes_checked,
            own_writes_missed: ledger.own_writes_missed,
            ..Verified::default()
        };
        let quiet: Shared = Arc::new(Mutex::new(Steps::new()));
        if let Some(id) = &ledger.session {
            verified.sessions += 1;
            let found = step(&quiet, "verify", || {
                let mut client = self.sessions.clone();
                let request = ledger.request(sess::GetSessionRequest { id: id.clone() });
                async move { found(client.get_session(request).await) }
            })
            .await;
            tally(found, &mut verified.lost_sessions, &mut verified.unverified);
        }
        for id in &ledger.threads {
            verified.threads += 1;
            let found = step(&quiet, "verify", || {
                let mut client = self.sessions.clone();
                let request = ledger.request(sess::GetThreadRequest { id: id.clone() });
                async move { found(client.get_thread(request).await) }
            })
            .await;
            tally(found, &mut verified.lost_threads, &mut verified.unverified);
        }
        for (thread_id, turns) in &ledger.turns {
            verified.turns += turns.len() as u64;
            let Some(messages) = step(&quiet, "verify", || {
                every_message(
                    self.conversation.clone(),
                    thread_id.clone(),
                    ledger.token.clone(),
                )
            })
            .await
            else {
                verified.unverified += turns.len() as u64;
                continue;
            };
            let seqs: std::collections::BTreeSet<i64> = messages.iter().map(|m| m.seq).collect();
            let state = step(&quiet, "verify", || {
                let mut client = self.conversation.clone();
                let request = ledger.request(conv::GetStateRequest {
                    thread_id: thread_id.clone(),
                });
                async move { Ok(client.get_state(request).await?.into_inner().state) }
            })
            .await
            .flatten();
            let version = state.as_ref().map_or(0, |s| s.version);
            for turn in turns {
                let stored = (turn.first_seq..=turn.last_seq).all(|seq| seqs.contains(&seq));
                if !stored || version < turn.state_version {
                    verified.lost_turns += 1;
                }
            }
            let user_messages = messages
                .iter()
                .filter(|m| m.role == conv::Role::User as i32)
                .count() as u64;
            verified.unacknowledged_turns += user_messages.saturating_sub(turns.len() as u64);
        }
        verified
    }
}

/// Counts a read-back: found, lost (NOT_FOUND), or not checked (the read failed).
fn tally(found: Option<bool>, lost: &mut u64, unverified: &mut u64) {
    match found {
        Some(true) => {}
        Some(false) => *lost += 1,
        None => *unverified += 1,
    }
}

/// `Ok(true)` for an answer, `Ok(false)` for NOT_FOUND; other failures as usual.
fn found<T>(answer: Result<T, tonic::Status>) -> Result<bool, Failure> {
    match answer {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
        Err(status) => Err(status.into()),
    }
}

/// Every message of a thread, oldest first, page by page.
async fn every_message(
    mut client: ConversationServiceClient<BalancedChannel>,
    thread_id: String,
    token: Option<tonic::metadata::AsciiMetadataValue>,
) -> Result<Vec<conv::Message>, Failure> {
    let mut messages = Vec::new();
    let mut page_token = String::new();
    loop {
        let mut request = tonic::Request::new(conv::ListMessagesRequest {
            thread_id: thread_id.clone(),
            direction: conv::Direction::Forward as i32,
            page_size: 500,
            page_token,
        });
        if let Some(token) = &token {
            request
                .metadata_mut()
                .insert(boardroom_runtime::consistency::HEADER, token.clone());
        }
        let page = client.list_messages(request).await?.into_inner();
        messages.extend(page.messages);
        if page.next_page_token.is_empty() {
            return Ok(messages);
        }
        page_token = page.next_page_token;
    }
}

impl Steps {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            latencies: BTreeMap::new(),
            failures: BTreeMap::new(),
            retried: BTreeMap::new(),
            timeline: BTreeMap::new(),
            per_second: BTreeMap::new(),
            advisor_failures: BTreeMap::new(),
            recovered: BTreeMap::new(),
            attempts: BTreeMap::new(),
        }
    }
}

/// A short unique suffix (time-based), so that reruns never share users.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

/// Resident memory (bytes) and CPU time (clock ticks) of a process.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss_kb * 1024, ticks))
}

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Samples every process twice a second until `until`: (seconds since start, RSS MB, CPU %).
async fn watch(pids: Vec<(String, u32)>, started: Instant, until: Instant) -> Value {
    let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let mut last: BTreeMap<u32, (Instant, u64)> = BTreeMap::new();
    while Instant::now() < until {
        for (name, pid) in &pids {
            if let Some((rss, ticks)) = sample(*pid) {
                let now = Instant::now();
                let cpu = last.get(pid).map_or(0.0, |(at, before)| {
                    (ticks.saturating_sub(*before)) as f64
                        / TICKS_PER_SECOND
                        / now.duration_since(*at).as_secs_f64()
                        * 100.0
                });
                last.insert(*pid, (now, ticks));
                series.entry(name.clone()).or_default().push((
                    started.elapsed().as_secs_f64(),
                    rss as f64 / 1e6,
                    cpu,
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    json!(
        series
            .iter()
            .map(|(name, points)| {
                let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
                let cpus: Vec<f64> = points.iter().skip(1).map(|p| p.2).collect();
                let mean_cpu = cpus.iter().sum::<f64>() / cpus.len().max(1) as f64;
                (
                    name.clone(),
                    json!({
                        "peak_rss_mb": peak,
                        "mean_cpu_percent": mean_cpu,
                        "samples": points.iter().map(|p| json!([p.0, p.1, p.2])).collect::<Vec<_>>(),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
    )
}

/// Every second of the run: calls that succeeded in it, failed, retried, and the p99 (ms) of
/// each step's successes.
fn per_second(steps: &Steps) -> Vec<Value> {
    let last = steps
        .per_second
        .keys()
        .chain(steps.timeline.keys())
        .max()
        .copied();
    let Some(last) = last else {
        return Vec::new();
    };
    (0..=last)
        .map(|second| {
            let calls = steps.per_second.get(&second);
            let (retried, failed) = steps.timeline.get(&second).copied().unwrap_or_default();
            let p99: serde_json::Map<String, Value> = calls
                .into_iter()
                .flatten()
                .map(|(step, micros)| ((*step).to_owned(), json!(quantile_ms(micros, 0.99))))
                .collect();
            json!({
                "second": second,
                "ok": calls.map_or(0, |c| c.values().map(Vec::len).sum::<usize>()),
                "failed": failed,
                "retried": retried,
                "recovered": steps.recovered.get(&second).copied().unwrap_or_default(),
                "p99_ms": p99,
            })
        })
        .collect()
}

/// With a surge: the run before it, during it and after it (from the second the surge's
/// users start leaving), each with its calls that succeeded and their p99 by step (retries
/// included), the attempts retried, the calls that failed after their retries and those
/// that succeeded after some.
fn phases(steps: &Steps, surge: Surge) -> Value {
    if surge.users == 0 {
        return Value::Null;
    }
    let (at, end) = (surge.at.as_secs(), (surge.at + surge.lasts).as_secs());
    let phase = |name: &str, from: u64, to: u64| {
        let mut by_step: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
        for (_, calls) in steps.per_second.range(from..to) {
            for (step, micros) in calls {
                by_step.entry(step).or_default().extend(micros);
            }
        }
        let (mut retried, mut failed) = (0, 0);
        for (_, (r, f)) in steps.timeline.range(from..to) {
            retried += r;
            failed += f;
        }
        let recovered: u64 = steps.recovered.range(from..to).map(|(_, n)| n).sum();
        let attempts = attempts_by_step(steps, from, to);
        // A step whose every attempt was refused in the phase is reported too.
        for step in attempts.keys() {
            by_step.entry(step).or_default();
        }
        let by_step: serde_json::Map<String, Value> = by_step
            .iter()
            .map(|(step, micros)| {
                (
                    (*step).to_owned(),
                    json!({"ok": micros.len(), "p99_ms": quantile_ms(micros, 0.99),
                           "attempts": attempts.get(step).map(Attempts::report)}),
                )
            })
            .collect();
        json!({"phase": name, "from_s": from, "to_s": to, "retried": retried,
               "failed": failed, "recovered": recovered, "steps": by_step})
    };
    json!([
        phase("before", 0, at),
        phase("surge", at, end),
        phase("after", end, u64::MAX),
    ])
}

/// The attempts of each step from second `from` to before `to`.
fn attempts_by_step(steps: &Steps, from: u64, to: u64) -> BTreeMap<&'static str, Attempts> {
    let mut by_step: BTreeMap<&'static str, Attempts> = BTreeMap::new();
    for (_, seconds) in steps.attempts.range(from..to) {
        for (step, attempts) in seconds {
            by_step.entry(step).or_default().extend(attempts);
        }
    }
    by_step
}

/// The `q` quantile (nearest rank) of `micros`, in milliseconds.
fn quantile_ms(micros: &[u32], q: f64) -> f64 {
    if micros.is_empty() {
        return 0.0;
    }
    let mut sorted = micros.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// Runs the scenario and prints its JSON report.
pub async fn run(plan: UsersPlan) -> anyhow::Result<()> {
    let mut session_channels = Vec::new();
    let mut conversation_channels = Vec::new();
    for _ in 0..plan.connections.max(1) {
        session_channels.push(connect(&plan.session_host)?);
        conversation_channels.push(connect(&plan.conversation_host)?);
    }
    let mut sessions = SessionServiceClient::new(session_channels[0].clone());
    let boardroom = sessions
        .create_boardroom(sess::CreateBoardroomRequest {
            owner_id: "load".into(),
            name: "Load board".into(),
            advisors: ["CFO", "CTO", "COO"]
                .iter()
                .map(|name| sess::Advisor {
                    name: (*name).into(),
                    role: format!("the {name}"),
                    system_prompt: format!("You are the {name} of a growing company."),
                    model: "mock".into(),
                })
                .collect(),
            request_id: String::new(),
            double_text: sess::DoubleTextPolicy::Unspecified as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .boardroom
        .ok_or_else(|| anyhow::anyhow!("CreateBoardroom answered no boardroom"))?;
    let steps: Shared = Arc::new(Mutex::new(Steps::new()));
    let checks = Arc::new(tokio::sync::Semaphore::new(32));
    let started = Instant::now();
    let until = started + plan.duration;
    // Owned by the run: ends at `until`, awaited for its samples.
    #[allow(clippy::disallowed_methods)]
    let watcher = tokio::spawn(watch(plan.pids.clone(), started, until));
    let surge = plan.surge;
    let users: Vec<_> = (0..plan.users + surge.users)
        .map(|index| {
            // The run's users start over the ramp and stay; a surge's arrive over the first
            // quarter of it and leave at its end.
            let (start_at, until) = if index < plan.users {
                let share = index as f64 / plan.users.max(1) as f64;
                (started + plan.ramp.mul_f64(share), until)
            } else {
                let share = (index - plan.users) as f64 / surge.users as f64;
                let at = started + surge.at;
                (
                    at + (surge.lasts / 4).mul_f64(share),
                    until.min(at + surge.lasts),
                )
            };
            let user = User {
                index,
                boardroom_id: boardroom.id.clone(),
                sessions: SessionServiceClient::new(
                    session_channels[index % session_channels.len()].clone(),
                ),
                conversation: ConversationServiceClient::new(
                    conversation_channels[index % conversation_channels.len()].clone(),
                ),
                steps: steps.clone(),
                think: plan.think,
                until,
            };
            let checks = checks.clone();
            // Owned by the run: one task per simulated user, each ends at the run's end and is awaited.
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(async move {
                tokio::time::sleep_until(start_at.into()).await;
                user.run(checks).await
            })
        })
        .collect();
    let mut verified = Verified::default();
    for user in users {
        verified.add(&user.await?);
    }
    let elapsed = started.elapsed();
    let processes = watcher.await?;
    let report = {
        let steps = steps
            .lock()
            .map_err(|_| anyhow::anyhow!("a user panicked"))?;
        let names: Vec<&'static str> = steps
            .latencies
            .keys()
            .chain(steps.failures.keys())
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let attempts = attempts_by_step(&steps, 0, u64::MAX);
        let step_reports: serde_json::Map<String, Value> = names
            .iter()
            .map(|name| {
                let h = steps.latencies.get(name);
                let count = h.map_or(0, |h| h.len());
                let failures = steps.failures.get(name).cloned().unwrap_or_default();
                (
                    (*name).to_owned(),
                    json!({
                        "count": count,
                        "rps": count as f64 / elapsed.as_secs_f64(),
                        "p50_ms": h.map_or(0.0, |h| ms(h, 0.5)),
                        "p95_ms": h.map_or(0.0, |h| ms(h, 0.95)),
                        "p99_ms": h.map_or(0.0, |h| ms(h, 0.99)),
                        "max_ms": h.map_or(0.0, |h| h.max() as f64 / 1000.0),
                        "failures": failures,
                        "attempts": attempts.get(name).map(Attempts::report),
                    }),
                )
            })
            .collect();
        let errors: u64 = steps.failures.values().flat_map(|f| f.values()).sum();
        let retried: u64 = steps.retried.values().flat_map(|f| f.values()).sum();
        json!({
            "scenario": "users",
            "users": plan.users,
            "duration_s": elapsed.as_secs_f64(),
            "ramp_s": plan.ramp.as_secs_f64(),
            "think_s": plan.think.as_secs_f64(),
            "errors": errors,
            "retried_attempts": retried,
            "retried": steps.retried,
            "advisor_failures": steps.advisor_failures,
            "timeline": steps.timeline.iter().map(|(s, (r, f))| json!([s, r, f])).collect::<Vec<_>>(),
            "recovered": steps.recovered.iter().map(|(s, n)| json!([s, n])).collect::<Vec<_>>(),
            "surge": {"users": surge.users, "at_s": surge.at.as_secs_f64(), "for_s": surge.lasts.as_secs_f64()},
            "phases": phases(&steps, surge),
            "per_second": per_second(&steps),
            "writes": {
                "acknowledged": {"sessions": verified.sessions, "threads": verified.threads, "turns": verified.turns},
                "lost": {"sessions": verified.lost_sessions, "threads": verified.lost_threads, "turns": verified.lost_turns},
                "unacknowledged_turns_stored": verified.unacknowledged_turns,
                "unverified": verified.unverified,
            },
            "read_your_writes": {
                "checked": verified.own_writes_checked,
                "missed": verified.own_writes_missed,
            },
            "steps": step_reports,
            "processes": processes,
        })
    };
    if let Some(path) = &plan.html {
        std::fs::write(path, html(&report))?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The report as a page people read (see [`crate::report`]).
fn html(report: &Value) -> String {
    crate::report::html(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_in_milliseconds() {
        let micros: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&micros, 0.99), 99.0);
        assert_eq!(quantile_ms(&micros, 0.5), 50.0);
        assert_eq!(quantile_ms(&[7000], 0.99), 7.0);
        assert_eq!(quantile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn every_second_of_the_run_is_reported_even_a_quiet_one() {
        let mut steps = Steps::new();
        steps
            .per_second
            .entry(0)
            .or_default()
            .insert("GetState", vec![1000, 3000]);
        steps.timeline.insert(2, (1, 4));
        let seconds = per_second(&steps);
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0]["ok"], 2);
        assert_eq!(seconds[0]["p99_ms"]["GetState"], 3.0);
        assert_eq!(seconds[1]["ok"], 0);
        assert_eq!(seconds[2]["failed"], 4);
        assert_eq!(seconds[2]["retried"], 1);
    }

    #[test]
    fn a_surge_splits_the_run_into_before_during_and_after() {
        let mut steps = Steps::new();
        for (second, micros) in [(1, 2000), (10, 40_000), (11, 90_000), (25, 3000)] {
            steps
                .per_second
                .entry(second)
                .or_default()
                .insert("GetState", vec![micros]);
        }
        steps.timeline.insert(12, (5, 1));
        steps.timeline.insert(21, (2, 0));
        steps.recovered.insert(21, 2);
        let surge = Surge {
            users: 10,
            at: Duration::from_secs(10),
            lasts: Duration::from_secs(10),
        };
        let split = phases(&steps, surge);
        let names: Vec<_> = (0..3).map(|i| split[i]["phase"].clone()).collect();
        assert_eq!(names, ["before", "surge", "after"]);
        assert_eq!(split[0]["steps"]["GetState"]["p99_ms"], 2.0);
        assert_eq!(split[1]["steps"]["GetState"]["ok"], 2);
        assert_eq!(split[1]["steps"]["GetState"]["p99_ms"], 90.0);
        assert_eq!(split[1]["retried"], 5);
        assert_eq!(split[1]["failed"], 1);
        assert_eq!(split[2]["recovered"], 2);
        assert_eq!(split[2]["steps"]["GetState"]["p99_ms"], 3.0);
        assert_eq!(phases(&Steps::new(), Surge::default()), Value::Null);
    }

    #[tokio::test]
    async fn each_attempt_is_timed_as_admitted_or_refused_and_other_failures_are_neither() {
        let steps: Shared = Arc::new(Mutex::new(Steps::new()));
        // Refused twice with `retry-after` (the generator waits at least that each time),
        // then admitted: three attempts, one call.
        let asked = Duration::from_millis(20);
        let mut tries = 0;
        let got = step(&steps, "GetState", || {
            tries += 1;
            let answer = if tries < 3 {
                Err(Failure {
                    label: "Unavailable".into(),
                    retryable: true,
                    retry_after: Some(asked),
                })
            } else {
                Ok(7)
            };
            async move { answer }
        })
        .await;
        assert_eq!(got, Some(7));
        // A failure that is not a refusal (no retry-after) is counted as neither.
        record_attempt(
            &steps,
            "GetState",
            Duration::from_millis(5),
            Err(&Failure {
                label: "Unavailable".into(),
                retryable: true,
                retry_after: None,
            }),
        );
        let steps = steps.lock().expect("steps");
        let report = attempts_by_step(&steps, 0, u64::MAX)["GetState"].report();
        assert_eq!(report["admitted"], 1);
        assert_eq!(report["refused"], 2);
        assert!((report["refused_share"].as_f64().expect("share") - 2.0 / 3.0).abs() < 1e-9);
        // The admitted attempt's own time, without the two waits before it; the call's
        // latency has them.
        let admitted_ms = report["admitted_p99_ms"].as_f64().expect("ms");
        assert!(admitted_ms < 20.0, "{admitted_ms}");
        let call = &steps.latencies["GetState"];
        assert_eq!(call.len(), 1);
        assert!(call.max() >= 40_000, "the call took {} µs", call.max());
    }
}

//! `boardroom load --scenario users`: simulated users of the whole suite. Each user, started
//! along a ramp, opens a session and a thread, then loops until the run ends: lists its
//! sessions and threads, runs a turn (streamed to the end), reads the thread's messages and
//! state, opens another thread every fifth round, and thinks. Every step is timed and its
//! failures counted by code; the server processes named by `--pid` are sampled for resident
//! memory and CPU. Prints a JSON report and writes an HTML one with `--html`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boardroom_proto::conversation::v1 as conv;
use boardroom_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use boardroom_proto::session::v1 as sess;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

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
}

/// Per-step latencies and failures.
#[derive(Default)]
struct Steps {
    latencies: BTreeMap<&'static str, Histogram<u64>>,
    failures: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

type Shared = Arc<Mutex<Steps>>;

fn record(steps: &Shared, step: &'static str, started: Instant, result: Result<(), tonic::Code>) {
    let Ok(mut steps) = steps.lock() else {
        return;
    };
    match result {
        Ok(()) => {
            let micros = started.elapsed().as_micros().max(1) as u64;
            steps
                .latencies
                .entry(step)
                .or_insert_with(|| {
                    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
                })
                .record(micros)
                .ok();
        }
        Err(code) => {
            *steps
                .failures
                .entry(step)
                .or_default()
                .entry(format!("{code:?}"))
                .or_default() += 1;
        }
    }
}

/// Runs `call`, timing it as `step`; `None` when it failed.
async fn step<T>(
    steps: &Shared,
    name: &'static str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Option<T> {
    let started = Instant::now();
    match call.await {
        Ok(value) => {
            record(steps, name, started, Ok(()));
            Some(value)
        }
        Err(status) => {
            record(steps, name, started, Err(status.code()));
            None
        }
    }
}

async fn connect(host: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{host}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {host}: {e}"))
}

/// A RunTurn streamed to its end: the turn must complete.
async fn run_turn(
    client: &mut ConversationServiceClient<Channel>,
    thread_id: &str,
    round: u64,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .run_turn(conv::RunTurnRequest {
            thread_id: thread_id.to_owned(),
            content: format!("Round {round}: what should we do next?"),
            author: "load".into(),
            ..conv::RunTurnRequest::default()
        })
        .await?
        .into_inner();
    let mut completed = false;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(conv::run_turn_response::Event::TurnCompleted(_)) => completed = true,
            Some(conv::run_turn_response::Event::TurnFailed(failed)) => {
                return Err(tonic::Status::aborted(failed.message));
            }
            _ => {}
        }
    }
    if completed {
        Ok(())
    } else {
        Err(tonic::Status::data_loss(
            "the turn stream ended without TurnCompleted",
        ))
    }
}

struct User {
    index: usize,
    boardroom_id: String,
    sessions: SessionServiceClient<Channel>,
    conversation: ConversationServiceClient<Channel>,
    steps: Shared,
    think: Duration,
    until: Instant,
}

impl User {
    async fn run(mut self) {
        let user_id = format!("load-user-{}-{}", self.index, uuid_like());
        let Some(session) = step(
            &self.steps,
            "CreateSession",
            self.sessions.create_session(sess::CreateSessionRequest {
                boardroom_id: self.boardroom_id.clone(),
                user_id: user_id.clone(),
                title: "load".into(),
                request_id: String::new(),
            }),
        )
        .await
        .and_then(|r| r.into_inner().session) else {
            return;
        };
        let mut thread = None;
        let mut round = 0u64;
        while Instant::now() < self.until {
            if thread.is_none() || round % 5 == 4 {
                thread = step(
                    &self.steps,
                    "CreateThread",
                    self.sessions.create_thread(sess::CreateThreadRequest {
                        session_id: session.id.clone(),
                        thread_type: sess::ThreadType::Main as i32,
                        title: format!("thread {round}"),
                        request_id: String::new(),
                    }),
                )
                .await
                .and_then(|r| r.into_inner().thread)
                .or(thread);
            }
            let Some(current) = thread.clone() else {
                return;
            };
            step(
                &self.steps,
                "ListSessions",
                self.sessions.list_sessions(sess::ListSessionsRequest {
                    user_id: user_id.clone(),
                    page_size: 20,
                    ..sess::ListSessionsRequest::default()
                }),
            )
            .await;
            step(
                &self.steps,
                "ListThreads",
                self.sessions.list_threads(sess::ListThreadsRequest {
                    session_id: session.id.clone(),
                    page_size: 20,
                    ..sess::ListThreadsRequest::default()
                }),
            )
            .await;
            step(
                &self.steps,
                "GetSession",
                self.sessions.get_session(sess::GetSessionRequest {
                    id: session.id.clone(),
                }),
            )
            .await;
            let mut conversation = self.conversation.clone();
            step(
                &self.steps,
                "RunTurn",
                run_turn(&mut conversation, &current.id, round),
            )
            .await;
            step(
                &self.steps,
                "ListMessages",
                self.conversation.list_messages(conv::ListMessagesRequest {
                    thread_id: current.id.clone(),
                    direction: conv::Direction::Backward as i32,
                    page_size: 20,
                    page_token: String::new(),
                }),
            )
            .await;
            step(
                &self.steps,
                "GetState",
                self.conversation.get_state(conv::GetStateRequest {
                    thread_id: current.id.clone(),
                }),
            )
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

/// Runs the scenario and prints its JSON report.
pub async fn run(plan: UsersPlan) -> anyhow::Result<()> {
    let mut session_channels = Vec::new();
    let mut conversation_channels = Vec::new();
    for _ in 0..plan.connections.max(1) {
        session_channels.push(connect(&plan.session_host).await?);
        conversation_channels.push(connect(&plan.conversation_host).await?);
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
        })
        .await?
        .into_inner()
        .boardroom
        .ok_or_else(|| anyhow::anyhow!("CreateBoardroom answered no boardroom"))?;
    let steps: Shared = Arc::default();
    let started = Instant::now();
    let until = started + plan.duration;
    let watcher = tokio::spawn(watch(plan.pids.clone(), started, until));
    let users: Vec<_> = (0..plan.users)
        .map(|index| {
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
            let start_at = started + plan.ramp.mul_f64(index as f64 / plan.users.max(1) as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(start_at.into()).await;
                user.run().await;
            })
        })
        .collect();
    for user in users {
        user.await?;
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
                    }),
                )
            })
            .collect();
        let errors: u64 = steps.failures.values().flat_map(|f| f.values()).sum();
        json!({
            "scenario": "users",
            "users": plan.users,
            "duration_s": elapsed.as_secs_f64(),
            "ramp_s": plan.ramp.as_secs_f64(),
            "think_s": plan.think.as_secs_f64(),
            "errors": errors,
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

/// The report as a page: a table and latency bars per step, memory over time per process.
fn html(report: &Value) -> String {
    let mut rows = String::new();
    let mut bars = String::new();
    let steps = report["steps"].as_object().cloned().unwrap_or_default();
    let widest = steps
        .values()
        .map(|s| s["p99_ms"].as_f64().unwrap_or(0.0))
        .fold(1.0, f64::max);
    for (i, (name, s)) in steps.iter().enumerate() {
        let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
        rows.push_str(&format!(
            "<tr><td>{name}</td><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>\n",
            s["count"], f("rps"), f("p50_ms"), f("p95_ms"), f("p99_ms"), s["failures"]
        ));
        let y = 20 + i * 34;
        bars.push_str(&format!("<text x=\"0\" y=\"{}\">{name}</text>\n", y + 14));
        for (j, (key, color)) in [
            ("p50_ms", "#4c78a8"),
            ("p95_ms", "#f58518"),
            ("p99_ms", "#e45756"),
        ]
        .iter()
        .enumerate()
        {
            let width = f(key) / widest * 560.0;
            bars.push_str(&format!(
                "<rect x=\"130\" y=\"{}\" width=\"{width:.1}\" height=\"9\" fill=\"{color}\"><title>{key} {:.2} ms</title></rect>\n",
                y + j * 10,
                f(key)
            ));
        }
    }
    let mut memory = String::new();
    if let Some(processes) = report["processes"].as_object() {
        let top = processes
            .values()
            .map(|p| p["peak_rss_mb"].as_f64().unwrap_or(0.0))
            .fold(1.0, f64::max);
        let span = report["duration_s"].as_f64().unwrap_or(1.0).max(1.0);
        for (name, p) in processes {
            let points: Vec<String> = p["samples"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let (t, rss) = (s[0].as_f64().unwrap_or(0.0), s[1].as_f64().unwrap_or(0.0));
                    format!(
                        "{:.1},{:.1}",
                        t / span * 680.0 + 10.0,
                        190.0 - rss / top * 170.0
                    )
                })
                .collect();
            memory.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"#4c78a8\" points=\"{}\"><title>{name}: peak {:.1} MB, mean CPU {:.0} %</title></polyline>\n",
                points.join(" "),
                p["peak_rss_mb"].as_f64().unwrap_or(0.0),
                p["mean_cpu_percent"].as_f64().unwrap_or(0.0)
            ));
        }
        memory.push_str(&format!(
            "<text x=\"10\" y=\"14\">peak {top:.1} MB</text>\n"
        ));
    }
    format!(
        "<!doctype html><meta charset=\"utf-8\"><title>Boardroom load: {users} users</title>
<style>body{{font:14px sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}td:first-child{{text-align:left}}</style>
<h1>{users} users, {duration:.0} s, {errors} errors</h1>
<table><tr><th>step</th><th>calls</th><th>RPS</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>failures</th></tr>
{rows}</table>
<h2>Latency by step (p50, p95, p99)</h2>
<svg width=\"700\" height=\"{height}\">{bars}</svg>
<h2>Server memory over the run</h2>
<svg width=\"700\" height=\"200\">{memory}</svg>
<pre>{json}</pre>
",
        users = report["users"],
        duration = report["duration_s"].as_f64().unwrap_or(0.0),
        errors = report["errors"],
        height = 30 + steps.len() * 34,
        json = serde_json::to_string_pretty(&report["processes"].as_object().map(|p| p.iter().map(|(k, v)| (k.clone(), json!({"peak_rss_mb": v["peak_rss_mb"], "mean_cpu_percent": v["mean_cpu_percent"]}))).collect::<serde_json::Map<_, _>>())).unwrap_or_default(),
    )
}

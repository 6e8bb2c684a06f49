//! `boardroom load`: a ghz-compatible load generator for any unary Boardroom RPC.
//!
//! Requests are built from JSON through the services' own descriptor set (no proto files at
//! hand), sent over a fixed number of HTTP/2 connections by `-c` concurrent workers, for `-n`
//! calls or `-z` time, optionally paced to `--rps`. Accepts ghz's flags and its JSON config
//! file (`--config`); prints count, RPS, latency percentiles and a count per status code, as
//! text or as ghz-style JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use clap::Args;
use hdrhistogram::Histogram;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use serde_json::{Value, json};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Debug, Args, Default)]
pub struct LoadArgs {
    /// Target `host:port`.
    host: Option<String>,
    /// A ghz JSON config file; flags given on the command line win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The method: `package.Service.Method` or `package.Service/Method`.
    #[arg(long)]
    call: Option<String>,
    /// Request data as JSON: an object, or an array used round-robin.
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// A file holding the request data JSON.
    #[arg(short = 'D', long = "data-file")]
    data_file: Option<PathBuf>,
    /// Request metadata as a JSON object (e.g. `{"authorization":"Bearer …"}`).
    #[arg(short = 'm', long)]
    metadata: Option<String>,
    /// Concurrent workers (streams in flight).
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Number of calls (ignored with --duration).
    #[arg(short = 'n', long)]
    total: Option<u64>,
    /// Run for this long (`10s`, `500ms`, `2m`) instead of a count.
    #[arg(short = 'z', long)]
    duration: Option<String>,
    /// Pace to this many calls per second overall (0: as fast as possible).
    #[arg(short = 'r', long)]
    rps: Option<u64>,
    /// HTTP/2 connections the workers share.
    #[arg(long)]
    connections: Option<usize>,
    /// Deadline of each call (`20s`).
    #[arg(short = 't', long)]
    timeout: Option<String>,
    /// Output format: `summary` or `json`.
    #[arg(short = 'O', long, alias = "format")]
    output: Option<String>,
    /// Accepted for ghz compatibility: plaintext is the default.
    #[arg(long)]
    insecure: bool,
    /// CPU cores the load generator may use (ghz `--cpus`); default: all. Leave cores to the
    /// server when both share a machine.
    #[arg(long)]
    pub cpus: Option<usize>,
    /// Leave the first N calls out of the statistics (ghz `--skipFirst`): connection warm-up.
    #[arg(long = "skipFirst", alias = "skip-first")]
    skip_first: Option<u64>,
    /// A scenario instead of one RPC: `users` (simulated users of the whole suite; the host is
    /// the session service's, `--conversation-host` the conversation service's).
    #[arg(long)]
    scenario: Option<String>,
    /// Users of the scenario.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Time over which the users start.
    #[arg(long, default_value = "10s")]
    ramp: String,
    /// Pause between a user's rounds.
    #[arg(long, default_value = "1s")]
    think: String,
    /// The conversation service (scenario `users`).
    #[arg(long, default_value = "127.0.0.1:50052")]
    conversation_host: String,
    /// A server process to sample for memory and CPU, as `name=PID` (repeatable).
    #[arg(long = "pid")]
    pids: Vec<String>,
    /// Also write an HTML report here (scenario `users`).
    #[arg(long)]
    html: Option<PathBuf>,
    /// A surge (scenario `users`): this many more users arrive at `--surge-at` (over the
    /// first quarter of `--surge-for`) and leave `--surge-for` later, each once its round
    /// ends: the load rises past what the suite holds and falls back.
    #[arg(long, default_value_t = 0)]
    surge_users: usize,
    /// When the surge starts, from the run's start.
    #[arg(long, default_value = "30s")]
    surge_at: String,
    /// How long the surge lasts.
    #[arg(long, default_value = "30s")]
    surge_for: String,
}

/// The resolved settings of a run.
#[derive(Debug, Clone)]
struct Plan {
    host: String,
    method: MethodDescriptor,
    requests: Arc<Vec<Bytes>>,
    metadata: MetadataMap,
    concurrency: usize,
    total: Option<u64>,
    duration: Option<Duration>,
    rps: u64,
    connections: usize,
    timeout: Duration,
    json: bool,
    skip_first: u64,
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("bad duration {text:?}"))?;
    let secs = match unit {
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "us" | "µs" => value / 1e6,
        _ => anyhow::bail!("bad duration unit in {text:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn descriptor_pool() -> anyhow::Result<DescriptorPool> {
    let mut pool = DescriptorPool::decode(boardroom_proto::FILE_DESCRIPTOR_SET)?;
    pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)?;
    Ok(pool)
}

fn find_method(pool: &DescriptorPool, call: &str) -> anyhow::Result<MethodDescriptor> {
    let normalized = call.trim_start_matches('/').replace('/', ".");
    let method = pool
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .find(|m| m.full_name() == normalized)
        .ok_or_else(|| anyhow::anyhow!("no method {call:?} in the Boardroom contracts"))?;
    anyhow::ensure!(
        !method.is_client_streaming() && !method.is_server_streaming(),
        "only unary methods can be load-tested"
    );
    Ok(method)
}

fn encode_requests(method: &MethodDescriptor, data: Value) -> anyhow::Result<Vec<Bytes>> {
    let items = match data {
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => anyhow::bail!("data is an empty array"),
        other => vec![other],
    };
    items
        .into_iter()
        .map(|item| {
            let message = DynamicMessage::deserialize(method.input(), item).map_err(|e| {
                anyhow::anyhow!("data does not fit {}: {e}", method.input().full_name())
            })?;
            Ok(Bytes::from(message.encode_to_vec()))
        })
        .collect()
}

fn metadata_from(value: &Value) -> anyhow::Result<MetadataMap> {
    let mut map = MetadataMap::new();
    let object = value
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("metadata must be a JSON object"))?;
    for (key, value) in object {
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        map.insert(
            MetadataKey::from_bytes(key.as_bytes())?,
            MetadataValue::try_from(text.as_str())?,
        );
    }
    Ok(map)
}

fn plan(args: LoadArgs) -> anyhow::Result<Plan> {
    let file: Value = match &args.config {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        None => json!({}),
    };
    let text = |flag: Option<String>, key: &str| {
        flag.or_else(|| file.get(key).and_then(Value::as_str).map(str::to_owned))
    };
    let number =
        |flag: Option<u64>, key: &str| flag.or_else(|| file.get(key).and_then(Value::as_u64));

    let call = text(args.call, "call").ok_or_else(|| anyhow::anyhow!("--call is required"))?;
    let host = text(args.host, "host").unwrap_or_else(|| "127.0.0.1:50051".into());
    let method = find_method(&descriptor_pool()?, &call)?;
    let data = match (
        args.data,
        args.data_file
            .or_else(|| text(None, "data-file").map(PathBuf::from)),
    ) {
        (Some(inline), _) => serde_json::from_str(&inline)?,
        (None, Some(path)) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        (None, None) => file.get("data").cloned().unwrap_or_else(|| json!({})),
    };
    let metadata = match args.metadata {
        Some(inline) => metadata_from(&serde_json::from_str(&inline)?)?,
        None => file
            .get("metadata")
            .map(metadata_from)
            .transpose()?
            .unwrap_or_default(),
    };
    let duration = text(args.duration, "duration")
        .map(|d| parse_duration(&d))
        .transpose()?;
    let total = if duration.is_some() {
        None
    } else {
        Some(number(args.total, "total").unwrap_or(200))
    };
    let json_out = matches!(text(args.output, "format").as_deref(), Some("json"));
    let timeout = text(args.timeout, "timeout")
        .map(|t| parse_duration(&t))
        .transpose()?
        .unwrap_or(Duration::from_secs(20));
    Ok(Plan {
        host,
        requests: Arc::new(encode_requests(&method, data)?),
        method,
        metadata,
        concurrency: args
            .concurrency
            .or_else(|| number(None, "concurrency").map(|c| c as usize))
            .unwrap_or(50)
            .max(1),
        total,
        duration,
        rps: number(args.rps, "rps").unwrap_or(0),
        connections: args
            .connections
            .or_else(|| number(None, "connections").map(|c| c as usize))
            .unwrap_or(1)
            .max(1),
        timeout,
        json: json_out,
        skip_first: number(args.skip_first, "skipFirst").unwrap_or(0),
    })
}

/// Passes already-encoded messages through unchanged.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What one worker saw.
struct Tally {
    latencies_us: Histogram<u64>,
    codes: BTreeMap<i32, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latencies_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            codes: BTreeMap::new(),
            errors: BTreeMap::new(),
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latencies_us.add(other.latencies_us)?;
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        for (message, n) in other.errors {
            *self.errors.entry(message).or_default() += n;
        }
        Ok(())
    }
}

async fn worker(
    plan: Arc<Plan>,
    channel: Channel,
    next: Arc<AtomicU64>,
    started: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut client = tonic::client::Grpc::new(channel);
    let path: http::uri::PathAndQuery = format!(
        "/{}/{}",
        plan.method.parent_service().full_name(),
        plan.method.name()
    )
    .parse()?;
    let deadline = plan.duration.map(|d| started + d);
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if plan.total.is_some_and(|total| index >= total) {
            break;
        }
        // Open-loop pacing: call `index` is due at index / rps after the start, and its latency
        // counts from then, so a server that falls behind is charged for the queueing it causes
        // (no coordinated omission).
        let due = (plan.rps > 0)
            .then(|| started + Duration::from_secs_f64(index as f64 / plan.rps as f64));
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let body = plan.requests[(index as usize) % plan.requests.len()].clone();
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = plan.metadata.clone();
        request.set_timeout(plan.timeout);
        let sent = due.unwrap_or_else(Instant::now);
        let outcome = match client.ready().await {
            Ok(()) => client
                .unary(request, path.clone(), RawCodec)
                .await
                .map(|_| ()),
            Err(err) => Err(Status::unavailable(err.to_string())),
        };
        if index < plan.skip_first {
            continue;
        }
        let micros = u64::try_from(sent.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        tally.latencies_us.saturating_record(micros);
        let code = match outcome {
            Ok(()) => Code::Ok,
            Err(status) => {
                *tally
                    .errors
                    .entry(format!("{:?}: {}", status.code(), status.message()))
                    .or_default() += 1;
                status.code()
            }
        };
        *tally.codes.entry(code as i32).or_default() += 1;
    }
    Ok(tally)
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if let Some(scenario) = &args.scenario {
        anyhow::ensure!(
            scenario == "users",
            "unknown scenario {scenario:?} (known: users)"
        );
        let pids = args
            .pids
            .iter()
            .map(|p| {
                let (name, pid) = p
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--pid wants name=PID, not {p:?}"))?;
                Ok((name.to_owned(), pid.parse()?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let run_for = args.duration.as_deref().unwrap_or("60s");
        let duration = parse_duration(run_for)?;
        let surge = crate::scenario::Surge {
            users: args.surge_users,
            at: parse_duration(&args.surge_at)?,
            lasts: parse_duration(&args.surge_for)?,
        };
        if surge.users > 0 && surge.at >= duration {
            anyhow::bail!(
                "--surge-at ({}) must fall within the run (-z {run_for})",
                args.surge_at
            );
        }
        return crate::scenario::run(crate::scenario::UsersPlan {
            session_host: args
                .host
                .clone()
                .unwrap_or_else(|| "127.0.0.1:50051".into()),
            conversation_host: args.conversation_host.clone(),
            users: args.users.max(1),
            duration,
            ramp: parse_duration(&args.ramp)?,
            think: parse_duration(&args.think)?,
            connections: args.connections.unwrap_or(4),
            pids,
            html: args.html.clone(),
            surge,
        })
        .await;
    }
    let plan = Arc::new(plan(args)?);
    let mut channels = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let endpoint = Endpoint::from_shared(format!("http://{}", plan.host))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .initial_connection_window_size(Some(8 * 1024 * 1024))
            .initial_stream_window_size(Some(1024 * 1024));
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", plan.host))?,
        );
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|i| {
            // Owned by the run: every worker ends at its count or deadline and is awaited.
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(worker(
                plan.clone(),
                channels[i % channels.len()].clone(),
                next.clone(),
                started,
            ))
        })
        .collect();
    let mut tally = Tally::new()?;
    for handle in workers {
        tally.merge(handle.await??)?;
    }
    let elapsed = started.elapsed();
    let report = report(&plan, &tally, elapsed);
    if plan.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn code_name(code: i32) -> String {
    if code == 0 {
        "OK".to_owned()
    } else {
        format!("{:?}", Code::from_i32(code))
    }
}

/// A ghz-style report (durations in nanoseconds).
fn report(plan: &Plan, tally: &Tally, elapsed: Duration) -> Value {
    let h = &tally.latencies_us;
    let count = h.len();
    let ns = |micros: u64| micros.saturating_mul(1000);
    let percentiles = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
    json!({
        "call": plan.method.full_name(),
        "host": plan.host,
        "concurrency": plan.concurrency,
        "connections": plan.connections,
        "count": count,
        "total": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        "average": (h.mean() * 1000.0) as u64,
        "fastest": ns(h.min()),
        "slowest": ns(h.max()),
        "rps": count as f64 / elapsed.as_secs_f64(),
        "latencyDistribution": percentiles.iter().map(|p| json!({"percentage": p, "latency": ns(h.value_at_quantile(p / 100.0))})).collect::<Vec<_>>(),
        "statusCodeDistribution": tally.codes.iter().map(|(c, n)| (code_name(*c), json!(n))).collect::<serde_json::Map<_, _>>(),
        "errorDistribution": tally.errors.iter().map(|(m, n)| (m.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
    })
}

fn print_summary(report: &Value) {
    let ms = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1e6;
    println!("Summary:");
    println!(
        "  Call:         {}",
        report["call"].as_str().unwrap_or_default()
    );
    println!("  Count:        {}", report["count"]);
    println!("  Total:        {:.2} ms", ms(&report["total"]));
    println!("  Slowest:      {:.3} ms", ms(&report["slowest"]));
    println!("  Fastest:      {:.3} ms", ms(&report["fastest"]));
    println!("  Average:      {:.3} ms", ms(&report["average"]));
    println!(
        "  Requests/sec: {:.1}",
        report["rps"].as_f64().unwrap_or(0.0)
    );
    println!("\nLatency distribution:");
    for entry in report["latencyDistribution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  {:>5} % in {:.3} ms",
            entry["percentage"],
            ms(&entry["latency"])
        );
    }
    println!("\nStatus code distribution:");
    for (code, n) in report["statusCodeDistribution"]
        .as_object()
        .into_iter()
        .flatten()
    {
        println!("  [{code}]   {n} responses");
    }
    if let Some(errors) = report["errorDistribution"]
        .as_object()
        .filter(|e| !e.is_empty())
    {
        println!("\nError distribution:");
        for (message, n) in errors {
            println!("  [{n}]   {message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_ghz() {
        assert_eq!(
            parse_duration("10s").expect("valid"),
            Duration::from_secs(10)
        );
        assert_eq!(
            parse_duration("500ms").expect("valid"),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("2m").expect("valid"),
            Duration::from_secs(120)
        );
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn json_data_becomes_the_request_message() {
        let method = find_method(
            &descriptor_pool().expect("pool"),
            "boardroom.session.v1.SessionService/GetSession",
        )
        .expect("found");
        let requests =
            encode_requests(&method, json!([{"id": "a"}, {"id": "b"}])).expect("encoded");
        assert_eq!(requests.len(), 2);
        let decoded = boardroom_proto::session::v1::GetSessionRequest::decode(requests[1].clone())
            .expect("decodes");
        assert_eq!(decoded.id, "b");
        assert!(encode_requests(&method, json!({"no_such_field": 1})).is_err());
    }

    #[tokio::test]
    async fn a_surge_that_starts_after_the_run_is_refused_naming_its_flag() {
        let args = LoadArgs {
            scenario: Some("users".into()),
            duration: Some("10s".into()),
            surge_users: 5,
            surge_at: "10s".into(),
            surge_for: "5s".into(),
            ..LoadArgs::default()
        };
        let err = run(args).await.expect_err("refused before connecting");
        assert!(err.to_string().contains("--surge-at (10s)"), "{err}");
    }

    #[test]
    fn unknown_and_streaming_methods_are_refused() {
        let pool = descriptor_pool().expect("pool");
        assert!(find_method(&pool, "boardroom.session.v1.SessionService.Nope").is_err());
        assert!(find_method(&pool, "grpc.health.v1.Health/Watch").is_err());
        assert!(find_method(&pool, "grpc.health.v1.Health.Check").is_ok());
    }
}

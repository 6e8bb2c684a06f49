//! A real OTLP/gRPC trace receiver for benchmarks: `otlp-receiver [ADDR]` (default
//! 127.0.0.1:4317) accepts every export and, on SIGTERM or Ctrl-C, prints how many spans it
//! received by service as one JSON line.

use std::collections::BTreeMap;
use std::time::Duration;

use boardroom_testkit::otlp::OtlpReceiver;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into())
        .parse()?;
    let mut receiver = OtlpReceiver::bind(addr).await;
    eprintln!("otlp-receiver: listening on {}", receiver.endpoint());
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        for span in receiver.received() {
            *counts.entry(span.service).or_default() += 1;
        }
    }
    for span in receiver.received() {
        *counts.entry(span.service).or_default() += 1;
    }
    println!("{}", serde_json::json!({ "spans": counts }));
    Ok(())
}

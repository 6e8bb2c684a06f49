//! A fake provider as a process, for load runs against a real `boardroom serve`
//! (`bench/faults.sh`, `bench/llm-providers.sh`): answers at a model's pace and fails a share
//! of calls; OpenAI-compatible unless `--protocol anthropic|gemini`.
//!
//! Usage: `fake-openai [ADDR] [--protocol P] [--error-percent N] [--latency-ms N] [--tokens N]
//! [--tokens-per-second N]`; prints its base URL, runs until SIGTERM or SIGINT.

use std::time::Duration;

use boardroom_testkit::{FakeProvider, Protocol};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:0".to_owned();
    let (mut errors, mut latency, mut tokens, mut pace) = (0, 0, 0, 0);
    let mut protocol = Protocol::OpenAi;
    while let Some(arg) = args.next() {
        if arg == "--protocol" {
            protocol = match args.next().as_deref() {
                Some("openai") => Protocol::OpenAi,
                Some("anthropic") => Protocol::Anthropic,
                Some("gemini") => Protocol::Gemini,
                other => anyhow::bail!("--protocol: {other:?} is not openai, anthropic or gemini"),
            };
            continue;
        }
        let mut value = || -> anyhow::Result<u64> {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} wants a value"))?
                .parse()
                .map_err(|e| anyhow::anyhow!("{arg}: {e}"))
        };
        match arg.as_str() {
            "--error-percent" => errors = value()?,
            "--latency-ms" => latency = value()?,
            "--tokens" => tokens = value()?,
            "--tokens-per-second" => pace = value()?,
            _ if !arg.starts_with("--") => addr = arg,
            _ => anyhow::bail!("unknown option {arg}"),
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async {
            let fake = FakeProvider::serve(protocol, &addr).await;
            fake.set_error_percent(errors);
            fake.set_latency(Duration::from_millis(latency));
            fake.set_pace(tokens, pace);
            println!("{}", fake.base_url());
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("fake-openai: {} calls", fake.calls());
            Ok(())
        })
}

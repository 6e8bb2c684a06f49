//! `boardroom load` against the echo baseline: the smoke version of the benchmarks.

use std::time::Duration;

use boardroom_testkit::{TestDatabase, metric_value, scrape_metrics};

use crate::binary::{boardroom, conversation_replica, serve, serve_on, succeeded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_counts_percentiles_and_codes_as_json() {
    let server = serve(&["--service", "session-echo"]).await;
    let out = boardroom()
        .args([
            "load",
            &server.grpc.to_string(),
            "--call",
            "boardroom.session.v1.SessionService/GetSession",
        ])
        .args([
            "-d",
            r#"[{"id":"a"},{"id":"b"}]"#,
            "-c",
            "8",
            "-n",
            "300",
            "--format",
            "json",
        ])
        .output()
        .await
        .expect("runs");
    let report: serde_json::Value = serde_json::from_slice(succeeded(&out)).expect("JSON report");
    assert_eq!(report["count"], 300);
    assert_eq!(report["statusCodeDistribution"]["OK"], 300);
    assert!(report["rps"].as_f64().expect("rps") > 0.0);
    let p99 = report["latencyDistribution"]
        .as_array()
        .expect("distribution")
        .iter()
        .find(|e| e["percentage"] == 99.0)
        .expect("p99");
    assert!(p99["latency"].as_u64().expect("ns") > 0);

    // Unimplemented calls are counted by code, not fatal.
    let out = boardroom()
        .args([
            "load",
            &server.grpc.to_string(),
            "--call",
            "boardroom.session.v1.SessionService.GetThread",
            "-n",
            "5",
            "-c",
            "1",
            "-O",
            "json",
        ])
        .output()
        .await
        .expect("runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["statusCodeDistribution"]["Unimplemented"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_scenario_drives_the_whole_suite_and_reports_each_step() {
    let server = serve(&[]).await;
    let conversation = server
        .conversation_grpc
        .expect("`serve` runs the conversation service");
    let html = std::env::temp_dir().join(format!("users-{}.html", std::process::id()));
    let pid = server.child.id().expect("pid");
    let out = boardroom()
        .args(["load", &server.grpc.to_string(), "--scenario", "users"])
        .args(["--conversation-host", &conversation.to_string()])
        .args([
            "--users", "4", "-z", "3s", "--ramp", "500ms", "--think", "100ms",
        ])
        .args(["--pid", &format!("suite={pid}")])
        .arg("--html")
        .arg(&html)
        .output()
        .await
        .expect("runs");
    let report: serde_json::Value = serde_json::from_slice(succeeded(&out)).expect("JSON report");
    assert_eq!(report["errors"], 0, "{report}");
    for step in [
        "CreateSession",
        "CreateThread",
        "ListSessions",
        "ListThreads",
        "GetSession",
        "RunTurn",
        "ListMessages",
        "GetState",
    ] {
        let count = report["steps"][step]["count"].as_u64().unwrap_or(0);
        assert!(count >= 4, "{step}: {count} in {report}");
        assert!(report["steps"][step]["p99_ms"].as_f64().unwrap_or(0.0) > 0.0);
    }
    assert!(
        report["processes"]["suite"]["peak_rss_mb"]
            .as_f64()
            .unwrap_or(0.0)
            > 1.0
    );
    // Every write the users were told succeeded was read back at the end.
    let writes = &report["writes"];
    assert!(
        writes["acknowledged"]["turns"].as_u64().unwrap_or(0) >= 4,
        "{writes}"
    );
    assert!(
        writes["acknowledged"]["threads"].as_u64().unwrap_or(0) >= 4,
        "{writes}"
    );
    assert_eq!(writes["acknowledged"]["sessions"], 4, "{writes}");
    for kind in ["sessions", "threads", "turns"] {
        assert_eq!(writes["lost"][kind], 0, "{writes}");
    }
    assert_eq!(writes["unverified"], 0, "{writes}");
    assert_eq!(writes["unacknowledged_turns_stored"], 0, "{writes}");
    // Every second of the run is in the JSON; the page draws it and holds no raw JSON.
    let seconds = report["per_second"].as_array().expect("per_second");
    assert!(seconds.len() >= 2, "{seconds:?}");
    let ok: u64 = seconds.iter().map(|s| s["ok"].as_u64().unwrap_or(0)).sum();
    let counted: u64 = report["steps"]
        .as_object()
        .expect("steps")
        .values()
        .map(|s| s["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(ok, counted, "each success is in one second");
    let page = std::fs::read_to_string(&html).expect("HTML report");
    for expected in [
        "latency (ms, log scale)",
        "p99 latency (ms, log scale)",
        "time (s)",
        "RSS (MB)",
        "CPU (% of one core)",
        "RunTurn",
    ] {
        assert!(page.contains(expected), "{expected} missing from the page");
    }
    assert!(!page.contains("\"p99_ms\""), "raw JSON in the page");
    let _ = std::fs::remove_file(html);
}

/// The smoke version of `bench/faults.sh sigterm`: users spread over two conversation
/// instances; one gets SIGTERM while turns stream on it. It drains and exits cleanly, the
/// users' client stops sending it calls, no call fails and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_of_two_conversation_instances_fails_no_call_and_loses_no_write() {
    // Turns last a while (mock model: 100 ms to the first token, 100 tokens/s), so some are
    // in flight on the instance when it is told to stop.
    let pace = [
        (
            "BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS",
            "100".to_owned(),
        ),
        (
            "BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND",
            "100".to_owned(),
        ),
    ];
    let suite = serve_on(TestDatabase::postgres().await, &[], &pace).await;
    let first = suite.conversation_grpc.expect("conversation");
    let mut second = conversation_replica(
        &suite,
        &[("BOARDROOM_SERVER__SHUTDOWN_DELAY_MS", "300".to_owned())],
    )
    .await;
    let load = boardroom()
        .args(["load", &suite.grpc.to_string(), "--scenario", "users"])
        .args(["--conversation-host", &format!("{first},{}", second.grpc)])
        .args([
            "--users", "16", "-z", "6s", "--ramp", "500ms", "--think", "50ms",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    // Once the second instance is running turns, it is told to stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape_metrics(second.admin).await;
        if metric_value(&metrics, &["rpc_server_requests_total", "RunTurn"]) >= 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second instance got no turns:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.signal("TERM");
    let exited = tokio::time::timeout(Duration::from_secs(30), second.child.wait())
        .await
        .expect("it drains and exits")
        .expect("waited");
    assert!(exited.success(), "{exited:?}");
    let out = load.wait_with_output().await.expect("the load run ends");
    let report: serde_json::Value = serde_json::from_slice(succeeded(&out)).expect("JSON report");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["retried_attempts"], 0, "{report}");
    let writes = &report["writes"];
    for kind in ["sessions", "threads", "turns"] {
        assert_eq!(writes["lost"][kind], 0, "{writes}");
    }
    assert_eq!(writes["unverified"], 0, "{writes}");
    assert!(
        writes["acknowledged"]["turns"].as_u64().unwrap_or(0) >= 16,
        "{writes}"
    );
}

//! `boardroom load` against the echo baseline: the smoke version of the benchmarks.

use crate::binary::{boardroom, serve};

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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
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
    let page = std::fs::read_to_string(&html).expect("HTML report");
    assert!(page.contains("<svg") && page.contains("RunTurn"));
    let _ = std::fs::remove_file(html);
}

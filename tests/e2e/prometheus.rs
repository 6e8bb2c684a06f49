//! Every query of the Grafana dashboard and every alert of the PrometheusRule against a real
//! Prometheus (Debian's package, installed by scripts/test) scraping the four admin ports of a
//! live `boardroom serve` under a short users load: each must parse and return series, so no
//! panel or alert names a metric or a label value that does not exist
//! (k8s/tests/live_queries.py does the checking).

use std::process::Stdio;

use tokio::process::Command;

use crate::binary::{boardroom, serve_with_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_selector_returns_series_from_a_live_suite() {
    let (redis, _) = boardroom_testkit::redis_url().await;
    let server = serve_with_env(&[], &[("BOARDROOM_REDIS__URL", redis)]).await;
    let conversation = server
        .conversation_grpc
        .expect("serve runs the conversation");
    // The load outlasts the checker's wait for a full rate window (16 scrapes, 1 s apart).
    let mut load = boardroom()
        .arg("load")
        .arg(server.grpc.to_string())
        .args(["--scenario", "users", "--users", "10", "--duration", "25s"])
        .args(["--ramp", "2s", "--cpus", "1", "--conversation-host"])
        .arg(conversation.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the load");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut check = Command::new("python3");
    check
        .arg(format!("{root}/k8s/tests/live_queries.py"))
        .args(["--timeout", "120", "--min-scrapes", "16"])
        // Only a call that fails creates its status code's series: the error-rate alerts'
        // numerator. Every other series exists from the start (at zero when nothing happened).
        .args([
            "--allow-absent",
            r#"rpc_server_requests_total{job=~"boardroom-.+", rpc_service!~"grpc\\..*", rpc_grpc_status_code=~"2|4|13|14"}"#,
        ])
        .kill_on_drop(true);
    for (service, admin) in &server.admins {
        check
            .arg("--target")
            .arg(format!("boardroom-{service}={admin}"));
    }
    let checked = check.output().await.expect(
        "python3 k8s/tests/live_queries.py (Prometheus from Debian's package: scripts/test installs it)",
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "live_queries.py:\n{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    let loaded = load.wait().await.expect("the load ends");
    assert!(loaded.success(), "the load failed");
}

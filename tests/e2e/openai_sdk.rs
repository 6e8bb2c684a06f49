//! The gateway's OpenAI-compatible API as the official `openai` Python SDK sees it (a client we
//! did not write): unary, streaming, tool calls both ways, errors, embeddings, models, with
//! the callers' bearer tokens. `scripts/test` installs the SDK from PyPI when it is missing.

use std::process::Command;

use boardroom_testkit::{metric_value, scrape_metrics};

use crate::binary::serve_with_env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_calls_the_gateway() {
    let server = serve_with_env(
        &["--service", "llm-gateway"],
        &[
            ("BOARDROOM_AUTH__ENABLED", "true".into()),
            (
                "BOARDROOM_AUTH__TOKENS__SDK_CLIENT",
                "sk-boardroom-test".into(),
            ),
        ],
    )
    .await;
    let url = server
        .openai_url
        .clone()
        .expect("the OpenAI API is on by default");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openai_sdk/front_door.py"
    );
    let url_arg = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &url_arg, "sk-boardroom-test"])
            .output()
            .expect("python3 is not installed (scripts/test needs python3 with `openai` from PyPI)")
    })
    .await
    .expect("the SDK run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the openai package is missing: scripts/test installs it (python3 -m pip install openai)"
    );
    assert!(out.status.success(), "{url}\n{stdout}\n{stderr}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // The calls went through the same path as gRPC's: the gateway's own metrics counted them,
    // under the caller the token names.
    let metrics = scrape_metrics(server.admin).await;
    assert!(
        metric_value(&metrics, &["llm_requests_total{", "model=\"mock\""]) >= 4.0,
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, &["llm_tokens_total{", "caller=\"sdk_client\""]) > 0.0,
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, &["llm_http_requests_total{", "status=\"401\""]) >= 1.0,
        "the wrong key was refused"
    );
}

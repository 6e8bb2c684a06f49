//! The smoke version of `bench/scale.sh`: two `boardroom serve` processes (every service
//! twice) on 127.0.0.1 and 127.0.0.2, on a Redis Cluster (3 primaries, 3 replicas) and a
//! PostgreSQL primary with a streaming replica, each conversation instance balanced over both
//! session services and both gateways; the users scenario balanced over both instances by the
//! services' own client. Mid-run one process is SIGKILLed (one instance of every service at
//! once). No acknowledged write may be lost, no call may fail beyond the contract's retries,
//! and no list read with the token of the user's own write (`x-boardroom-lsn`) may miss it.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use boardroom_testkit::{RedisCluster, ReplicatedPostgres, TestDatabase};

use crate::binary::{boardroom, serve_on};

/// A free port on `ip` (a loopback address).
fn free(ip: [u8; 4]) -> SocketAddr {
    TcpListener::bind(SocketAddr::from((ip, 0)))
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The listen addresses of one instance of every service on `ip`.
struct Instance {
    session: SocketAddr,
    llm: SocketAddr,
    conversation: SocketAddr,
    env: Vec<(&'static str, String)>,
}

fn instance(ip: [u8; 4]) -> Instance {
    let (session, llm, conversation) = (free(ip), free(ip), free(ip));
    let env = vec![
        ("BOARDROOM_SESSION__LISTEN__GRPC_ADDR", session.to_string()),
        (
            "BOARDROOM_SESSION__LISTEN__ADMIN_ADDR",
            free(ip).to_string(),
        ),
        ("BOARDROOM_CACHE__LISTEN__GRPC_ADDR", free(ip).to_string()),
        ("BOARDROOM_CACHE__LISTEN__ADMIN_ADDR", free(ip).to_string()),
        ("BOARDROOM_LLM__LISTEN__GRPC_ADDR", llm.to_string()),
        ("BOARDROOM_LLM__LISTEN__ADMIN_ADDR", free(ip).to_string()),
        ("BOARDROOM_LLM__OPENAI_API__ADDR", free(ip).to_string()),
        (
            "BOARDROOM_CONVERSATION__LISTEN__GRPC_ADDR",
            conversation.to_string(),
        ),
        (
            "BOARDROOM_CONVERSATION__LISTEN__ADMIN_ADDR",
            free(ip).to_string(),
        ),
    ];
    Instance {
        session,
        llm,
        conversation,
        env,
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    let urls: Vec<String> = addrs.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!("[{}]", urls.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_every_service_on_a_redis_cluster_and_a_replica_lose_nothing_when_one_is_killed() {
    let pg = tokio::task::spawn_blocking(ReplicatedPostgres::start)
        .await
        .expect("primary and replica");
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    // The replica replays every commit 500 ms late yet stays within the lag bound, so it
    // serves the token-less reads: a list that missed the user's own write would show.
    tokio::task::block_in_place(|| pg.set_apply_delay(Duration::from_millis(500)));
    let (a, b) = (instance([127, 0, 0, 1]), instance([127, 0, 0, 2]));
    let shared = [
        ("BOARDROOM_REDIS__URL", cluster.url()),
        (
            "BOARDROOM_DATABASE__REPLICA_URLS",
            format!("[\"{}\"]", pg.replica_url()),
        ),
        (
            "BOARDROOM_CONVERSATION__SESSION_ADDRESSES",
            list(&[a.session, b.session]),
        ),
        (
            "BOARDROOM_CONVERSATION__LLM_ADDRESSES",
            list(&[a.llm, b.llm]),
        ),
        ("BOARDROOM_DATABASE__MAX_REPLICA_LAG_MS", "5000".to_owned()),
        // A killed instance's threads are free again within a lease.
        ("BOARDROOM_CONVERSATION__TURN_LEASE_MS", "1500".to_owned()),
        (
            "BOARDROOM_LLM__DEPLOYMENTS__MOCK__TTFT_MS",
            "100".to_owned(),
        ),
        (
            "BOARDROOM_LLM__DEPLOYMENTS__MOCK__TOKENS_PER_SECOND",
            "200".to_owned(),
        ),
    ];
    let db = TestDatabase {
        url: pg.primary_url(),
        schema: None,
    };
    let env = |instance: &Instance| -> Vec<(&'static str, String)> {
        shared.iter().cloned().chain(instance.env.clone()).collect()
    };
    // One at a time: the first migrates.
    let _first = serve_on(db.clone(), &[], &env(&a)).await;
    let mut second = serve_on(db, &[], &env(&b)).await;

    let out = boardroom()
        .arg("load")
        .arg(format!("{},{}", a.session, b.session))
        .args(["--scenario", "users", "--users", "16", "-z", "12s"])
        .args(["--think", "500ms", "--ramp", "2s"])
        .arg("--conversation-host")
        .arg(format!("{},{}", a.conversation, b.conversation))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the load generator");
    // Mid-run (the generator's clock starts with its first call, well within a second).
    tokio::time::sleep(Duration::from_secs(5)).await;
    second.child.start_kill().expect("SIGKILL");
    let out = out.wait_with_output().await.expect("the load run");
    let report: serde_json::Value = serde_json::from_slice(crate::binary::succeeded(&out))
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let writes = &report["writes"];
    let summary = format!(
        "errors {}, retried {}, writes {}, steps {}",
        report["errors"], report["retried_attempts"], writes, report["steps"]
    );
    eprintln!("{summary}");
    assert_eq!(
        report["errors"], 0,
        "no call failed past its retries: {summary}"
    );
    let own = &report["read_your_writes"];
    assert!(
        own["checked"].as_u64().unwrap_or(0) > 0,
        "lists were read with the token of the user's own write: {own}"
    );
    assert_eq!(
        own["missed"], 0,
        "no list read with the token missed the write: {own}"
    );
    for kind in ["sessions", "threads", "turns"] {
        assert_eq!(
            writes["lost"][kind], 0,
            "no acknowledged {kind} lost: {summary}"
        );
        assert!(
            writes["acknowledged"][kind].as_u64().unwrap_or(0) > 0,
            "the run wrote {kind}: {summary}"
        );
    }
}

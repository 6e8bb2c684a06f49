//! Spawning `boardroom serve` and watching its log.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use boardroom_testkit::TestDatabase;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// A running `boardroom serve` process.
pub struct Server {
    pub child: Child,
    /// The session service's (or, with `--service cache`, the cache service's) addresses.
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// Every service's admin address, by service (session, cache, llm-gateway, conversation).
    pub admins: Vec<(&'static str, SocketAddr)>,
    /// The cache service's gRPC address, when it runs.
    pub cache_grpc: Option<SocketAddr>,
    /// The LLM gateway's gRPC address, when it runs.
    pub llm_grpc: Option<SocketAddr>,
    /// The LLM gateway's OpenAI-compatible base URL (`http://ADDR/v1`), when it runs.
    pub openai_url: Option<String>,
    /// The conversation service's gRPC address, when it runs.
    pub conversation_grpc: Option<SocketAddr>,
    pub log: Lines<BufReader<ChildStderr>>,
    pub db: TestDatabase,
}

pub fn boardroom() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_boardroom"));
    cmd.env_remove("RUST_LOG")
        .env("BOARDROOM_TELEMETRY__FORMAT", "json")
        .kill_on_drop(true);
    cmd
}

/// The stdout of a finished `boardroom` command that must have succeeded (its stderr is the
/// failure message otherwise).
pub fn succeeded(out: &std::process::Output) -> &[u8] {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    &out.stdout
}

/// Starts `boardroom serve` with `args` on a fresh SQLite file and free ports, and waits for
/// its "listening" log line.
pub async fn serve(args: &[&str]) -> Server {
    serve_with_env(args, &[]).await
}

/// [`serve`] with extra environment variables.
pub async fn serve_with_env(args: &[&str], env: &[(&str, String)]) -> Server {
    serve_on(TestDatabase::sqlite(), args, env).await
}

/// [`serve_with_env`] on `db`.
pub async fn serve_on(db: TestDatabase, args: &[&str], env: &[(&str, String)]) -> Server {
    let mut child = boardroom()
        .arg("serve")
        .args(args)
        .env("BOARDROOM_DATABASE__URL", &db.url)
        .env("BOARDROOM_SESSION__LISTEN__GRPC_ADDR", "127.0.0.1:0")
        .env("BOARDROOM_SESSION__LISTEN__ADMIN_ADDR", "127.0.0.1:0")
        .env("BOARDROOM_CACHE__LISTEN__GRPC_ADDR", "127.0.0.1:0")
        .env("BOARDROOM_CACHE__LISTEN__ADMIN_ADDR", "127.0.0.1:0")
        .env("BOARDROOM_LLM__LISTEN__GRPC_ADDR", "127.0.0.1:0")
        .env("BOARDROOM_LLM__LISTEN__ADMIN_ADDR", "127.0.0.1:0")
        .env("BOARDROOM_LLM__OPENAI_API__ADDR", "127.0.0.1:0")
        .env("BOARDROOM_CONVERSATION__LISTEN__GRPC_ADDR", "127.0.0.1:0")
        .env("BOARDROOM_CONVERSATION__LISTEN__ADMIN_ADDR", "127.0.0.1:0")
        // The turn gate off: a debug build on a loaded test machine runs tasks late, and the
        // gate would refuse turns that these tests count on (its own tests turn it on).
        .env("BOARDROOM_CONVERSATION__TURN_ADMISSION_TARGET_MS", "0")
        // And the start gate, for the sessions and threads the load tests create at once.
        .env("BOARDROOM_SESSION__START_ADMISSION_TARGET_MS", "0")
        // The caller's environment last: it may name the addresses.
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning boardroom serve");
    let mut log = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // One "listening" line per service: `all` runs the session, cache, LLM gateway and
    // conversation services.
    let services = match args.iter().position(|a| *a == "--service") {
        Some(i) if args.get(i + 1) != Some(&"all") => 1,
        _ => 4,
    };
    let (mut session, mut cache, mut llm, mut conversation) = (None, None, None, None);
    let mut openai_url = None;
    let mut admins = Vec::new();
    for _ in 0..services {
        let line = wait_for_log(&mut log, "listening").await;
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let addr = |key: &str| -> SocketAddr {
            event["fields"][key]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
        };
        let addrs = (addr("grpc"), addr("admin"));
        assert_ne!(addrs.0.port(), 0, "no address in {line}");
        let service = if line.contains("cache service") {
            "cache"
        } else if line.contains("llm-gateway service") {
            "llm-gateway"
        } else if line.contains("conversation service") {
            "conversation"
        } else {
            "session"
        };
        admins.push((service, addrs.1));
        if line.contains("cache service") {
            cache = Some(addrs);
        } else if line.contains("llm-gateway service") {
            llm = Some(addrs);
            openai_url = event["fields"]["openai_api"]
                .as_str()
                .filter(|url| url.starts_with("http"))
                .map(str::to_owned);
        } else if line.contains("conversation service") {
            conversation = Some(addrs);
        } else {
            session = Some(addrs);
        }
    }
    let (grpc, admin) = session
        .or(cache)
        .or(llm)
        .or(conversation)
        .expect("a service listens");
    Server {
        child,
        grpc,
        admin,
        admins,
        cache_grpc: cache.map(|(grpc, _)| grpc),
        llm_grpc: llm.map(|(grpc, _)| grpc),
        openai_url,
        conversation_grpc: conversation.map(|(grpc, _)| grpc),
        log,
        db,
    }
}

/// A second conversation instance (`serve --service conversation`) on `suite`'s database,
/// calling `suite`'s session service and gateway, with `env` on top.
pub async fn conversation_replica(suite: &Server, env: &[(&str, String)]) -> Server {
    let mut all = vec![
        (
            "BOARDROOM_CONVERSATION__SESSION_ADDRESSES",
            format!("[\"http://{}\"]", suite.grpc),
        ),
        (
            "BOARDROOM_CONVERSATION__LLM_ADDRESSES",
            format!(
                "[\"http://{}\"]",
                suite.llm_grpc.expect("the suite runs the gateway")
            ),
        ),
    ];
    all.extend(env.iter().cloned());
    serve_on(suite.db.clone(), &["--service", "conversation"], &all).await
}

/// Reads log lines until one contains `needle` (bounded by a deadline).
/// When it does not come, the panic shows the last lines read (why the process stopped).
pub async fn wait_for_log(log: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let mut last = std::collections::VecDeque::with_capacity(20);
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.expect("reading the log") {
            if line.contains(needle) {
                return Ok(line);
            }
            if last.len() == 20 {
                last.pop_front();
            }
            last.push_back(line);
        }
        Err(())
    })
    .await;
    let tail = last.into_iter().collect::<Vec<_>>().join("\n");
    match found {
        Ok(Ok(line)) => line,
        Ok(Err(())) => {
            panic!("the process exited before logging {needle:?}; its last lines:\n{tail}")
        }
        Err(_) => panic!("no log line with {needle:?} within 30 s; the last lines:\n{tail}"),
    }
}

impl Server {
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// A CreateBoardroom of `advisors`, each on the mock model.
pub fn boardroom_of(advisors: &[&str]) -> boardroom_proto::session::v1::CreateBoardroomRequest {
    use boardroom_proto::session::v1 as spb;
    spb::CreateBoardroomRequest {
        owner_id: "owner".into(),
        name: "board".into(),
        advisors: advisors
            .iter()
            .map(|name| spb::Advisor {
                name: (*name).into(),
                model: "mock".into(),
                ..spb::Advisor::default()
            })
            .collect(),
        request_id: String::new(),
        double_text: spb::DoubleTextPolicy::Unspecified as i32,
        ..Default::default()
    }
}

/// A boardroom of `advisors` (each on the mock model), a session in it and its main thread,
/// created through the session service at `sessions`: the thread's id.
pub async fn new_thread(sessions: SocketAddr, advisors: &[&str]) -> String {
    use boardroom_proto::session::v1 as spb;
    let mut sessions = spb::session_service_client::SessionServiceClient::new(
        boardroom_testkit::channel(sessions).await,
    );
    let boardroom = sessions
        .create_boardroom(boardroom_of(advisors))
        .await
        .expect("boardroom")
        .into_inner()
        .boardroom
        .expect("boardroom");
    boardroom_testkit::main_thread(&mut sessions, boardroom.id).await
}

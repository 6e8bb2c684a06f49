//! Starting PostgreSQL or Redis from the installed binaries, once per machine user, shared by
//! every test process (nextest runs each test in its own process). A file lock serialises the
//! start; the port is recorded so later processes reuse the running server.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The per-user state folder of ephemeral servers.
pub(crate) fn state_dir() -> PathBuf {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    std::env::temp_dir().join(format!("boardroom-testkit-{user}"))
}

/// Runs `start` under an exclusive lock unless a server recorded under `name` still answers.
/// Returns its port.
pub(crate) fn shared_server(
    name: &str,
    start: impl FnOnce(&Path, u16) -> anyhow::Result<()>,
) -> anyhow::Result<u16> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir)?;
    let lock = File::create(dir.join(format!("{name}.lock")))?;
    lock.lock()?;
    let port_file = dir.join(format!("{name}.port"));
    if let Ok(text) = std::fs::read_to_string(&port_file)
        && let Ok(port) = text.trim().parse::<u16>()
        && port_answers(port)
    {
        return Ok(port);
    }
    let port = free_port()?;
    let data = dir.join(name);
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(&data)?;
    start(&data, port)?;
    wait_for_port(port, Duration::from_secs(30))?;
    File::create(&port_file)?.write_all(port.to_string().as_bytes())?;
    Ok(port)
}

pub(crate) fn port_answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if port_answers(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("server on port {port} did not start within {limit:?}")
}

/// Finds an installed binary on PATH or in the usual PostgreSQL folders.
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A command that runs as `postgres` when we are root (PostgreSQL refuses to run as root).
pub(crate) fn as_db_user(binary: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(binary);
        cmd
    } else {
        Command::new(binary)
    }
}

/// Gives `dir` to the `postgres` user when we are root (PostgreSQL refuses to run as root).
pub(crate) fn chown_for_db(dir: &Path) -> anyhow::Result<()> {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir)
            .status()?;
        anyhow::ensure!(status.success(), "chown of {} failed", dir.display());
    }
    Ok(())
}

pub(crate) fn start_postgres(data: &Path, port: u16) -> anyhow::Result<()> {
    let initdb = find_binary("initdb").ok_or_else(|| anyhow::anyhow!("initdb is not installed"))?;
    let postgres =
        find_binary("postgres").ok_or_else(|| anyhow::anyhow!("postgres is not installed"))?;
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(data.parent().unwrap_or(data))
            .status()?;
        anyhow::ensure!(status.success(), "chown of the test state folder failed");
    }
    let out = as_db_user(&initdb)
        .args(["-D"])
        .arg(data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .stdout(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = File::create(data.join("server.log"))?;
    use std::os::unix::process::CommandExt;
    // Its own process group: the server outlives this test process and serves the next ones.
    as_db_user(&postgres)
        .arg("-D")
        .arg(data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ])
        .args([
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=400",
        ])
        .arg("-k")
        .arg(data)
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    Ok(())
}

/// A `redis-server` on `port` keeping nothing on disk, its working folder `data`.
pub(crate) fn redis_command(data: &Path, port: u16) -> anyhow::Result<Command> {
    let redis = find_binary("redis-server")
        .ok_or_else(|| anyhow::anyhow!("redis-server is not installed"))?;
    let mut command = Command::new(redis);
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(data);
    Ok(command)
}

pub(crate) fn start_redis(data: &Path, port: u16) -> anyhow::Result<()> {
    let status = redis_command(data, port)?
        .args(["--daemonize", "yes", "--logfile"])
        .arg(data.join("redis.log"))
        .status()?;
    anyhow::ensure!(status.success(), "redis-server failed to start");
    Ok(())
}

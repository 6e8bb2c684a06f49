//! A PostgreSQL primary with one streaming replica, of one test, from the installed binaries
//! (`initdb`, `pg_basebackup -R`, `postgres`), on free ports. The test may delay the replica's
//! replay (`recovery_min_apply_delay`), stop it and start it again. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::ephemeral::{self, as_db_user, find_binary};

/// A primary and its streaming replica.
#[derive(Debug)]
pub struct ReplicatedPostgres {
    dir: PathBuf,
    primary: (u16, Option<Child>),
    replica: (u16, Option<Child>),
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn binary(name: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| panic!("{name} is installed"))
}

fn run(command: &mut std::process::Command, what: &str) {
    let out = command.stdin(Stdio::null()).output().expect(what);
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ReplicatedPostgres {
    /// Initialises a primary, starts it, clones it into a replica with `pg_basebackup -R` and
    /// starts that; returns once both answer.
    pub fn start() -> Self {
        let dir = ephemeral::state_dir().join(format!("pg-replicated-{}", crate::unique_suffix()));
        std::fs::create_dir_all(&dir).expect("folder");
        ephemeral::chown_for_db(&dir).expect("chown");
        let primary_dir = dir.join("primary");
        run(
            as_db_user(&binary("initdb"))
                .arg("-D")
                .arg(&primary_dir)
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]),
            "initdb",
        );
        let mut pg = Self {
            dir,
            primary: (free_port(), None),
            replica: (free_port(), None),
        };
        pg.primary.1 = Some(pg.spawn(&primary_dir, pg.primary.0));
        pg.wait_for(pg.primary.0);
        run(
            as_db_user(&binary("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &pg.primary.0.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(pg.dir.join("replica"))
                .args(["-R", "-X", "stream"]),
            "pg_basebackup",
        );
        pg.start_replica();
        pg
    }

    fn spawn(&self, data: &Path, port: u16) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("{port}.log"))).expect("log");
        as_db_user(&binary("postgres"))
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .arg("-k")
            .arg(data)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("postgres starts")
    }

    fn wait_for(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ephemeral::port_answers(port) {
            assert!(
                Instant::now() < deadline,
                "postgres on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Accepting TCP is not yet accepting queries: wait for `pg_isready`.
        while !std::process::Command::new(binary("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "postgres on {port} is not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` of the primary.
    pub fn primary_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.primary.0)
    }

    /// The same of the replica.
    pub fn replica_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.replica.0)
    }

    /// The replica's port.
    pub fn replica_port(&self) -> u16 {
        self.replica.0
    }

    /// Delays the replica's replay of every commit by `delay` (0: none), taking effect at
    /// once (a configuration reload).
    pub fn set_apply_delay(&self, delay: Duration) {
        let conf = self.dir.join("replica").join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&conf).expect("auto.conf");
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("recovery_min_apply_delay"))
            .collect();
        let setting = format!("recovery_min_apply_delay = '{}ms'", delay.as_millis());
        lines.push(&setting);
        std::fs::write(&conf, lines.join("\n") + "\n").expect("auto.conf written");
        self.reload_replica();
    }

    fn reload_replica(&self) {
        run(
            as_db_user(&binary("pg_ctl"))
                .arg("reload")
                .arg("-D")
                .arg(self.dir.join("replica")),
            "pg_ctl reload",
        );
    }

    /// Stops the replica at once (`pg_ctl stop -m immediate`: no clean shutdown).
    pub fn stop_replica(&mut self) {
        if let Some(child) = self.replica.1.take() {
            stop(&self.dir.join("replica"), child);
        }
    }

    /// Starts the replica (again) and waits until it answers.
    pub fn start_replica(&mut self) {
        self.stop_replica();
        let child = self.spawn(&self.dir.join("replica"), self.replica.0);
        self.replica.1 = Some(child);
        self.wait_for(self.replica.0);
    }
}

/// Stops the server of `data` (its process runs under `runuser` when we are root, so the
/// child is not the server: `pg_ctl` finds it by its pid file).
fn stop(data: &Path, mut child: Child) {
    let _ = as_db_user(&binary("pg_ctl"))
        .args(["stop", "-m", "immediate", "-w", "-D"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for ReplicatedPostgres {
    fn drop(&mut self) {
        if let Some(child) = self.replica.1.take() {
            stop(&self.dir.join("replica"), child);
        }
        if let Some(child) = self.primary.1.take() {
            stop(&self.dir.join("primary"), child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

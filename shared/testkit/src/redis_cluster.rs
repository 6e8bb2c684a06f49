//! A Redis Cluster of one test, from the installed `redis-server` and `redis-cli`: three
//! primaries with a replica each, on free ports, failing over within about two seconds of a
//! primary's death (`cluster-node-timeout` 1000 ms). Killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ephemeral;

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// The primary a replica follows.
    pub primary_id: Option<String>,
    /// Seen as failed (`fail` or `fail?`).
    pub failed: bool,
    /// Slot ranges, inclusive, of a primary.
    pub slots: Vec<(u16, u16)>,
}

/// Six nodes: three primaries, three replicas.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<(u16, Option<Child>)>,
}

const NODES: usize = 6;

impl RedisCluster {
    /// Starts six nodes, joins them (`redis-cli --cluster create … --cluster-replicas 1`) and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start() -> Self {
        let dir = ephemeral::state_dir().join(format!("redis-cluster-{}", crate::unique_suffix()));
        std::fs::create_dir_all(&dir).expect("cluster folder");
        let listeners: Vec<std::net::TcpListener> = (0..NODES)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
            .collect();
        // The cluster bus listens on port + 10000: keep both below 65536.
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound").port())
            .collect();
        drop(listeners);
        let mut cluster = Self {
            dir,
            nodes: ports.iter().map(|p| (*p, None)).collect(),
        };
        if ports.iter().any(|p| *p > 55_535) {
            // Rare: ask again rather than fail on a bus port out of range.
            drop(cluster);
            return Self::start();
        }
        for i in 0..NODES {
            cluster.spawn(i);
        }
        let mut create = Command::new(redis_cli());
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_ok();
        cluster.wait_until_replicas_synced();
        cluster
    }

    /// Waits until every replica has finished its first sync (a replica that never synced
    /// refuses to take over: its data would be too old).
    fn wait_until_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every node's view: the replicas' roles spread over the cluster bus.
        while !self.ports().iter().all(|port| {
            parse_nodes(&cli(*port, &["cluster", "nodes"]))
                .iter()
                .filter(|n| !n.primary && n.primary_id.is_some())
                .count()
                == NODES / 2
        }) {
            assert!(Instant::now() < deadline, "the replicas were not assigned");
            std::thread::sleep(Duration::from_millis(20));
        }
        for node in self.nodes().iter().filter(|n| !n.primary) {
            while !cli(node.port, &["info", "replication"]).contains("master_link_status:up") {
                assert!(
                    Instant::now() < deadline,
                    "the replica on {} did not sync",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let port = self.nodes[i].0;
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node folder");
        let child = ephemeral::redis_command(&dir, port)
            .expect("redis-server is installed")
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.nodes[i].1 = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ephemeral::port_answers(port) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// fred's clustered URL: one seed node, the others as `node=` parameters.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|(p, _)| p);
        let first = ports.next().expect("nodes");
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// The nodes as a live node sees them.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let port = self.live_port().expect("a live node");
        parse_nodes(&cli(port, &["cluster", "nodes"]))
    }

    /// The primaries that hold slots and are not failed.
    pub fn primaries(&self) -> Vec<ClusterNode> {
        self.nodes()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .collect()
    }

    /// The port of the replica of the primary on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let nodes = self.nodes();
        let id = &nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node on that port")
            .id;
        nodes
            .iter()
            .find(|n| n.primary_id.as_ref() == Some(id))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no replica of {port} in {nodes:?}"))
    }

    /// The port of the primary that owns `key`'s slot.
    pub fn owner_of(&self, key: &str) -> u16 {
        let port = self.live_port().expect("a live node");
        let slot: u16 = cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot");
        self.primaries()
            .into_iter()
            .find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .expect("an owner of every slot")
    }

    fn live_port(&self) -> Option<u16> {
        self.nodes
            .iter()
            .find(|(_, child)| child.is_some())
            .map(|(p, _)| *p)
    }

    /// SIGKILLs the node on `port` (its replica takes over after the node timeout).
    pub fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port)
            && let Some(mut child) = child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every live node reports `cluster_state:ok` and every slot has a live
    /// primary (after a kill: the replica has been promoted).
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live: Vec<u16> = self
                .nodes
                .iter()
                .filter(|(_, c)| c.is_some())
                .map(|(p, _)| *p)
                .collect();
            let states_ok = live
                .iter()
                .all(|p| cli(*p, &["cluster", "info"]).contains("cluster_state:ok"));
            let covered: u32 = self
                .primaries()
                .iter()
                .filter(|n| live.contains(&n.port))
                .flat_map(|n| n.slots.iter())
                .map(|(a, b)| u32::from(b - a) + 1)
                .sum();
            if states_ok && covered == 16_384 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster is not ok: {}",
                cli(live[0], &["cluster", "nodes"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Moves `slots` slots from the primary on `from` to the one on `to`
    /// (`redis-cli --cluster reshard`), keys and all.
    pub fn reshard(&self, from: u16, to: u16, slots: u16) {
        let nodes = self.nodes();
        let id = |port: u16| {
            nodes
                .iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .expect("a node on that port")
        };
        let out = Command::new(redis_cli())
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "reshard failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.wait_until_ok();
    }

    /// Runs one `redis-cli` command against the node on `port`; its output.
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }
}

fn redis_cli() -> PathBuf {
    ephemeral::find_binary("redis-cli").expect("redis-cli is installed")
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli())
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `CLUSTER NODES`: `id host:port@bus flags primary-id ping pong epoch link slot…`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let port = fields[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => range.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                failed: flags.iter().any(|f| f.starts_with("fail")),
                slots,
            })
        })
        .collect()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 12000 [5461->-67ed]
6ec2 127.0.0.1:30005@40005 master,fail - 1426238316232 1426238316232 5 disconnected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].primary_id.as_deref(), Some("e7d1"));
        assert!(!nodes[0].primary);
        assert_eq!(nodes[1].slots, vec![(5461, 10922)]);
        assert_eq!(nodes[2].slots, vec![(0, 5460), (12000, 12000)]);
        assert!(nodes[3].failed && nodes[3].slots.is_empty());
        assert_eq!(nodes[2].port, 30001);
    }
}

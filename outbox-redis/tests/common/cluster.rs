//! A real Redis Cluster of three masters (no replicas) on free ports, for the cluster tests.
//!
//! Each node is a `redis-server` child without persistence in its own temp dir; the cluster is
//! formed with `redis-cli --cluster create` and is ready once every node reports
//! `cluster_state:ok`. [`Cluster::shared`] starts one cluster per test process and hands the
//! same one to every caller.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use outbox_core::testkit::{unique_suffix, unreachable_server};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

const MASTERS: usize = 3;
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Another process may take a free port between our probe and the server's bind.
const ATTEMPTS: usize = 3;

/// Runs `redis-server` and kills it, then removes its dir, once its stdin (a pipe held by the
/// test process) closes: on drop, and also when the process exits without dropping (the
/// shared cluster lives in a static) or is killed. Prints the log tail when the server ends;
/// ignores SIGPIPE so that print cannot stop it before the cleanup once the test process is gone.
const WATCHDOG: &str = r#"
trap '' PIPE
dir=$1; shift
exec 3<&0
redis-server "$@" </dev/null >/dev/null 2>&1 3<&- &
pid=$!
{ read -r _ <&3; kill -KILL "$pid"; } >/dev/null 2>&1 &
exec 3<&-
wait "$pid"; status=$?
tail -n 20 "$dir/redis.log" >&2
rm -rf "$dir"
exit "$status"
"#;

/// A running cluster, stopped (and its temp dirs removed) on drop, even on panic.
pub struct Cluster {
    nodes: Vec<Node>,
}

struct Node {
    /// The watchdog `sh`; closing its stdin stops the server.
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    dir: PathBuf,
}

/// The cluster every test of this process shares; `Some` once started.
static SHARED: Mutex<Option<Arc<Cluster>>> = Mutex::new(None);

impl Cluster {
    /// The process's shared cluster, started by the first caller; `None` (skip; a failure
    /// under `OUTBOX_TEST_STRICT=1`) when `redis-server` or `redis-cli` is not installed.
    pub async fn shared() -> Option<Arc<Self>> {
        // Startup blocks (child processes, sync polling), so keep it off the test's runtime.
        match tokio::task::spawn_blocking(Self::shared_blocking).await {
            Ok(cluster) => cluster,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// A cluster of its own, for a test that disturbs it; same `None` as [`Cluster::shared`].
    pub async fn own() -> Option<Self> {
        match tokio::task::spawn_blocking(Self::start).await {
            Ok(cluster) => cluster,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn shared_blocking() -> Option<Arc<Self>> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.is_none() {
            *shared = Some(Arc::new(Self::start()?));
        }
        shared.clone()
    }

    /// Starts a fresh cluster, panicking with the reason (and the node's log) if it cannot.
    fn start() -> Option<Self> {
        let probes: [(&str, &[&str]); 3] =
            [("redis-server", &["--version"]), ("redis-cli", &["--version"]), ("sh", &["-c", "exit 0"])];
        for (binary, args) in probes {
            if let Err(e) = Command::new(binary).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status() {
                let why = format!("`{binary}` is needed to run a local Redis Cluster and was not found ({e})");
                return unreachable_server("PATH", binary, why);
            }
        }
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match Self::try_start() {
                Ok(cluster) => return Some(cluster),
                Err(e) => {
                    eprintln!("redis cluster start, attempt {attempt}/{ATTEMPTS} failed: {e}");
                    last = e;
                }
            }
        }
        panic!("cannot start a local Redis Cluster: {last}");
    }

    fn try_start() -> Result<Self, String> {
        // Client and cluster-bus port per node; `cluster-port` avoids the default port + 10000,
        // which overflows 65535 for a high ephemeral port.
        let ports = free_ports(2 * MASTERS)?;
        let mut cluster = Self { nodes: Vec::with_capacity(MASTERS) };
        for pair in ports.chunks(2) {
            let node = Node::spawn(pair[0], pair[1])?;
            cluster.nodes.push(node);
        }
        for i in 0..MASTERS {
            let (port, dir) = (cluster.nodes[i].port, cluster.nodes[i].dir.clone());
            // Its own dir proves the answer comes from our server, not one that took the port.
            cluster.wait(&format!("node {port} to answer"), || {
                let (_, answer): (String, String) = query(port, redis::cmd("CONFIG").arg("GET").arg("dir")).ok()?;
                (Path::new(&answer) == dir).then_some(())
            })?;
        }

        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        create.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut cli = create.spawn().map_err(|e| format!("cannot run redis-cli: {e}"))?;
        // redis-cli waits for the nodes to agree without a limit of its own.
        let created = cluster.wait("redis-cli --cluster create", || cli.try_wait().ok().flatten().map(|_| ()));
        if created.is_err() {
            let _ = cli.kill();
        }
        let out = cli.wait_with_output().map_err(|e| format!("redis-cli: {e}"))?;
        let said = || format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        created.map_err(|e| format!("{e}; redis-cli said: {}", said()))?;
        if !out.status.success() {
            return Err(format!("redis-cli --cluster create failed ({}): {}", out.status, said()));
        }

        for i in 0..MASTERS {
            let port = cluster.nodes[i].port;
            cluster.wait(&format!("node {port} to report cluster_state:ok with {MASTERS} nodes"), || {
                let info: String = query(port, redis::cmd("CLUSTER").arg("INFO")).ok()?;
                let ok = info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == format!("cluster_known_nodes:{MASTERS}"));
                ok.then_some(())
            })?;
        }
        Ok(cluster)
    }

    /// Polls `check` until it succeeds, failing early (with its log) if a node exits.
    fn wait(&mut self, what: &str, mut check: impl FnMut() -> Option<()>) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            for node in &mut self.nodes {
                if let Some(failure) = node.exited() {
                    return Err(format!("{failure} while waiting for {what}"));
                }
            }
            if check().is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out after {READY_WITHIN:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One `redis://` URL per master.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// A new cluster connection (it lives on the calling test's runtime).
    pub async fn connect(&self) -> ClusterConnection {
        let client = ClusterClient::builder(self.urls())
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(5))
            .build()
            .expect("cluster client");
        client.get_async_connection().await.expect("cluster connection")
    }

    /// A plain connection to each master, for checks the cluster client would route away.
    pub async fn node_connections(&self) -> Vec<redis::aio::MultiplexedConnection> {
        let mut conns = Vec::new();
        for url in self.urls() {
            let client = redis::Client::open(url).expect("node url");
            conns.push(client.get_multiplexed_async_connection().await.expect("node connection"));
        }
        conns
    }
}

impl Node {
    fn spawn(port: u16, bus_port: u16) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("outbox-redis-cluster-{}-{port}", unique_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // Redis reports its dir resolved (e.g. macOS's /tmp symlink), so compare like with like.
        let dir = dir.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG, "sh"])
            .arg(&dir)
            .args(["--port", &port.to_string(), "--cluster-port", &bus_port.to_string()])
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(file("nodes.conf"))
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"])
            .arg(&dir)
            .arg("--logfile")
            .arg(file("redis.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                format!("cannot start redis-server: {e}")
            })?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, port, dir })
    }

    /// Why the server is gone, with its log tail, if it exited.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        Some(format!("redis-server on port {} exited ({status}):\n{log}", self.port))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// `n` distinct free ports: all listeners are held at once so none repeats.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr().map(|a| (l, a.port()))))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    Ok(listeners.into_iter().map(|(_, port)| port).collect())
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    cmd.query(&mut conn)
}

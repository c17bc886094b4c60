//! Redis helpers: servers of a test's own, dumps of whole keyspaces, and asserting keys
//! against the traffic's oracle.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tenantstream::testing::cache;
use tenantstream::testing::domain::{Keyspace, TenantMap};
use tenantstream::testing::traffic::{Expected, ExpectedConfig};

use super::services::{free_port, wait_listening};

/// Redis servers of the test's own (FLUSHALL or a cluster there touches no other test), from
/// Debian's redis-server; stopped on drop, also when a test panics while starting them.
///
/// Each server logs to a file of its own: a server that inherited the test's stderr and outlived
/// it would hold the suite's output pipe open, and CI would wait on it for good.
pub struct PrivateRedis {
    children: Vec<std::process::Child>,
    dir: tempfile::TempDir,
    pub url: String,
    pub ports: Vec<u16>,
    /// Keeps its data across a restart (append-only file in `dir`).
    persistent: bool,
}

/// A port picked by [`free_port`] can be taken again before the server binds it, so a server that
/// exits at start is started again on new ports, this many times in all.
const START_ATTEMPTS: usize = 5;

impl PrivateRedis {
    fn empty() -> Self {
        Self {
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            url: String::new(),
            ports: Vec::new(),
            persistent: false,
        }
    }

    /// Starts one server on `port` (with its cluster bus on `bus_port`) and waits until it
    /// listens. Returns the reason when the server exited instead.
    fn start(&mut self, port: u16, bus_port: Option<u16>) -> Result<(), String> {
        let log = self.dir.path().join(format!("redis-{port}.log"));
        let mut command = std::process::Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
        let appendonly = if self.persistent { "yes" } else { "no" };
        command.args(["--save", "", "--appendonly", appendonly]);
        command.arg("--dir").arg(self.dir.path());
        command.arg("--logfile").arg(&log);
        if let Some(bus_port) = bus_port {
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]);
            command.args(["--cluster-port", &bus_port.to_string()]);
            command.args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) starts");
        self.children.push(child);
        let child = self.children.last_mut().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let limit = Duration::from_secs(10);
        if let Err(exited) = wait_listening(child, "redis", &addr, &log, Duration::ZERO, limit) {
            self.children.pop();
            return Err(exited);
        }
        self.ports.push(port);
        Ok(())
    }

    /// Starts one server, on new free ports each time it exits at start.
    fn start_on_free_ports(&mut self, cluster: bool) {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let bus_port = cluster.then(free_port);
            match self.start(free_port(), bus_port) {
                Ok(()) => return,
                Err(reason) => failures.push(reason),
            }
        }
        panic!("redis-server did not start: {failures:#?}");
    }

    /// One standalone server.
    pub fn single() -> Self {
        let mut redis = Self::empty();
        redis.start_on_free_ports(false);
        redis.url = format!("redis://127.0.0.1:{}", redis.ports[0]);
        redis
    }

    /// One standalone server that keeps its data across [`PrivateRedis::restart`], as a
    /// production Redis with an append-only file does.
    pub fn single_persistent() -> Self {
        let mut redis = Self::empty();
        redis.persistent = true;
        redis.start_on_free_ports(false);
        redis.url = format!("redis://127.0.0.1:{}", redis.ports[0]);
        redis
    }

    /// One standalone server on `port` (to start it again where clients expect it).
    pub fn single_on(port: u16) -> Self {
        let mut redis = Self::empty();
        if let Err(reason) = redis.start(port, None) {
            panic!("{reason}");
        }
        redis.url = format!("redis://127.0.0.1:{port}");
        redis
    }

    /// A 3-node cluster (3 primaries, no replicas), every slot covered.
    pub fn cluster() -> Self {
        let mut redis = Self::empty();
        (0..3).for_each(|_| redis.start_on_free_ports(true));
        let nodes: Vec<String> = redis
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let status = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "cluster creation failed");
        let started = Instant::now();
        loop {
            let info = std::process::Command::new("redis-cli")
                .args(["-p", &redis.ports[0].to_string(), "cluster", "info"])
                .output()
                .expect("redis-cli cluster info");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cluster not ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        redis.url = format!(
            "redis-cluster://{}?node={}&node={}",
            nodes[0], nodes[1], nodes[2]
        );
        redis
    }
}

impl PrivateRedis {
    /// Stops the servers now (as an outage would).
    pub fn stop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl PrivateRedis {
    /// A standalone server's clean restart: SIGTERM (a persistent server writes its data out),
    /// `down_for` without a server, then a start on the same port and directory.
    pub fn restart(&mut self, down_for: Duration) {
        let port = self.ports.pop().expect("a running server");
        let mut child = self.children.pop().expect("a running server");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM redis-server");
        child.wait().unwrap();
        std::thread::sleep(down_for);
        if let Err(reason) = self.start(port, None) {
            panic!("{reason}");
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Redis value, for comparing whole keyspaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dumped {
    String(String),
    Hash(std::collections::BTreeMap<String, String>),
    Set(std::collections::BTreeSet<String>),
}

/// Every key of a single Redis server with its value and whether it expires.
pub async fn dump_all(
    redis: &fred::prelude::Client,
) -> std::collections::BTreeMap<String, (Dumped, bool)> {
    dump_matching(redis, "*").await
}

/// The keys matching `pattern` with their values and whether they expire.
pub async fn dump_matching(
    redis: &fred::prelude::Client,
    pattern: &str,
) -> std::collections::BTreeMap<String, (Dumped, bool)> {
    use fred::prelude::*;
    let mut out = std::collections::BTreeMap::new();
    for key in cache::scan_keys(redis, pattern).await.unwrap() {
        let kind: String = redis
            .custom(fred::cmd!("TYPE"), vec![key.clone()])
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => Dumped::String(redis.get(&key).await.unwrap()),
            "hash" => Dumped::Hash(redis.hgetall(&key).await.unwrap()),
            "set" => Dumped::Set(redis.smembers(&key).await.unwrap()),
            other => panic!("unexpected type {other} of {key}"),
        };
        let ttl: i64 = redis.ttl(&key).await.unwrap();
        out.insert(key, (value, ttl > 0));
    }
    out
}

/// Asserts that Redis holds exactly one key per expected order, at the expected version.
pub async fn assert_cache(redis: &fred::prelude::Client, expected: &Expected) {
    use fred::prelude::*;
    let mut total = 0;
    for tenant in &expected.tenants {
        total += cache::count_keys(redis, &format!("t:{{{tenant}}}:g0:order:*"))
            .await
            .unwrap();
    }
    assert_eq!(total, expected.orders.len(), "cache key count");
    for ((tenant, order_id), want) in &expected.orders {
        let key = cache::order_key(tenant, 0, order_id);
        let json: Option<String> = redis.get(&key).await.unwrap();
        let json = json.unwrap_or_else(|| panic!("missing cache key {key}"));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["version"], want.version, "{key}");
        assert_eq!(value["status"], want.event_type.status(), "{key}");
        assert_eq!(value["tenant_id"], tenant.to_string());
        assert_eq!(value["total_cents"], want.total_cents);
    }
}

/// Asserts Redis holds, in each keyspace's current generation, exactly the expected profile,
/// settings and SLA policies of the tenants that were never suspended, and the categories.
pub async fn assert_config_cache(redis: &fred::prelude::Client, expected: &ExpectedConfig) {
    use fred::prelude::*;
    let spaces = expected
        .profiles
        .keys()
        .map(|t| Keyspace::Tenant(*t))
        .chain([Keyspace::Reference]);
    let generations = cache::read_generations(redis, spaces).await.unwrap();
    for (tenant, (version, profile)) in &expected.profiles {
        let space = Keyspace::Tenant(*tenant);
        let generation = generations[&space];
        let suspended = profile["status"] == "suspended";
        assert_eq!(generation, i64::from(suspended), "generation of {tenant}");
        let json: Option<String> = redis.get(space.key(generation, "profile")).await.unwrap();
        let cached: serde_json::Value =
            serde_json::from_str(&json.unwrap_or_else(|| panic!("profile of {tenant}"))).unwrap();
        assert_eq!(cached["version"], *version, "profile version of {tenant}");
        for field in ["status", "name", "tier"] {
            assert_eq!(cached[field], profile[field], "profile {field} of {tenant}");
        }
        if suspended {
            continue;
        }
        for map in [TenantMap::Settings, TenantMap::SlaPolicies] {
            let cached: HashMap<String, String> = redis
                .hgetall(space.key(generation, map.name()))
                .await
                .unwrap();
            let cached: HashMap<String, serde_json::Value> = cached
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
                .collect();
            let want: HashMap<String, serde_json::Value> = expected
                .entries
                .iter()
                .filter(|((t, m, _), _)| t == tenant && *m == map)
                .filter_map(|((_, _, k), (_, v))| v.clone().map(|v| (k.clone(), v)))
                .collect();
            assert_eq!(cached, want, "{} of {tenant}", map.name());
        }
    }
    let generation = generations[&Keyspace::Reference];
    let ids_key = Keyspace::Reference.key(generation, "ids");
    for (id, (_, value)) in &expected.categories {
        let json: Option<String> = redis
            .get(cache::category_key(generation, id))
            .await
            .unwrap();
        let cached = json.map(|j| serde_json::from_str::<serde_json::Value>(&j).unwrap());
        assert_eq!(&cached, value, "category {id}");
        let member: bool = redis.sismember(&ids_key, id).await.unwrap();
        assert_eq!(member, value.is_some(), "category {id} in the index");
    }
}

//! A real Prometheus (Debian's package, /usr/bin/prometheus) scraping a worker: started on a
//! free loopback port with a generated `prometheus.yml` and its own storage in a temporary
//! folder, killed when dropped. Tests that need it fail (never skip) without the binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::services::free_port;

/// The series labels of one query result.
pub type Labels = BTreeMap<String, String>;

/// A Prometheus server of the test's own.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    client: reqwest::Client,
    /// Configuration, storage and log; removed when dropped (after the process is gone).
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port` serving `/metrics`) as job `job` every
    /// second, and waits until it is ready.
    pub async fn scraping(job: &str, target: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder for Prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(job, target)).expect("write prometheus.yml");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start `prometheus` ({error}): install Debian's prometheus package \
                     with scripts/test.sh (ensure_prometheus in scripts/services.sh)"
                )
            });
        let mut prometheus = Self {
            child,
            url: format!("http://{listen}"),
            client: reqwest::Client::new(),
            dir,
        };
        prometheus.wait_until_ready(Duration::from_secs(30)).await;
        prometheus
    }

    async fn wait_until_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        let ready = format!("{}/-/ready", self.url);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited at start ({status}): {}", self.log());
            }
            if let Ok(response) = self.client.get(&ready).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "prometheus not ready in {limit:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The instant vector `promql` evaluates to now: each series' labels and value.
    pub async fn query(&self, promql: &str) -> Vec<(Labels, f64)> {
        let body = self
            .api("/api/v1/query", &[("query", promql)])
            .await
            .unwrap_or_else(|error| panic!("query {promql}: {error}"));
        assert_eq!(
            body["resultType"], "vector",
            "query {promql} is not an instant vector: {body}"
        );
        body["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql}: no result in {body}"))
            .iter()
            .map(|series| {
                let labels = serde_json::from_value(series["metric"].clone()).unwrap();
                let value = series["value"][1].as_str().unwrap_or_default();
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("query {promql}: value {series}"));
                (labels, value)
            })
            .collect()
    }

    /// The value of a query that yields at most one series (`sum(...)`), `None` when it yields
    /// none.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        assert!(result.len() <= 1, "{promql} yields {result:?}");
        result.first().map(|(_, value)| *value)
    }

    /// The `data` of a successful API call, or Prometheus's error.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .query(params)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"].clone())
    }

    /// Queries `promql` every 200 ms until `holds` accepts its result (returned), or fails after
    /// `limit` with the last result and Prometheus's log.
    pub async fn wait_for(
        &self,
        promql: &str,
        limit: Duration,
        holds: impl Fn(&[(Labels, f64)]) -> bool,
    ) -> Vec<(Labels, f64)> {
        let started = Instant::now();
        loop {
            let result = self.query(promql).await;
            if holds(&result) {
                return result;
            }
            assert!(
                started.elapsed() < limit,
                "{promql} after {limit:?}: {result:?}; prometheus log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What Prometheus logged (warnings and errors).
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(job: &str, target: &str) -> String {
    format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: ['{target}']
"
    )
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

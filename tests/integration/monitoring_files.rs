//! The monitoring files of `deploy/`, checked against each other, the worker's metric lists and
//! the README: every metric the alerts and the dashboard query is one the worker exports and the
//! README documents (a typo there is a panel that stays empty or an alert that never fires), every alert has a severity, a templated summary, a runbook
//! section in the README and a promtool test that makes it fire and resolve, and the dashboard is
//! JSON whose every panel queries a datasource. Text checks, no services needed; promtool itself
//! (`check rules`, `test rules`) runs in scripts/test.sh.

use std::collections::BTreeSet;

use crate::support;

const RULES: &str = "deploy/prometheus/rules.yml";
const RULES_TEST: &str = "deploy/prometheus/rules_test.yml";
const DASHBOARD: &str = "deploy/grafana/tenantstream.json";
const DATASOURCE: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";

fn read(relative: &str) -> String {
    let path = support::manifest_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `tenantstream_[a-z0-9_]+` name in `text` (digits too: `…_latency_p99_seconds`), with the
/// histogram series suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "tenantstream_";
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices(PREFIX) {
        let preceded_by_word = text[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded_by_word {
            continue;
        }
        let rest = &text[start + PREFIX.len()..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = format!("{PREFIX}{}", &rest[..len]);
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .map_or(name.clone(), str::to_owned);
        names.insert(name);
    }
    names
}

/// An alert of rules.yml: its name and the lines of its rule.
struct Alert {
    name: String,
    body: Vec<String>,
}

impl Alert {
    /// The value of `key:` in the rule, unquoted.
    fn field(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}:");
        self.body.iter().find_map(|line| {
            let value = line.trim().strip_prefix(&prefix)?.trim();
            Some(value.trim_matches(|c| c == '"' || c == '\'').to_owned())
        })
    }
}

fn alerts() -> Vec<Alert> {
    let mut alerts: Vec<Alert> = Vec::new();
    for line in read(RULES).lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            alerts.push(Alert {
                name: name.trim().to_owned(),
                body: Vec::new(),
            });
        } else if let Some(alert) = alerts.last_mut() {
            alert.body.push(line.to_owned());
        }
    }
    assert!(alerts.len() >= 9, "{RULES}: {} alerts", alerts.len());
    alerts
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_metric_the_alerts_and_dashboard_query_is_one_the_worker_exports_and_documents() {
    use tenantstream::testing::metrics::CATALOGUE;
    use tenantstream::testing::monitor::TENANT_METRICS;
    let exported: BTreeSet<&str> = CATALOGUE
        .iter()
        .map(|(name, _, _)| *name)
        .chain(TENANT_METRICS.iter().map(|(name, _)| *name))
        .collect();
    let readme = read("README.md");
    for file in [RULES, DASHBOARD] {
        let names = metric_names(&read(file));
        assert!(names.len() >= 5, "{file}: only {names:?}");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "{file} queries {name}, which the worker does not export (CATALOGUE, \
                 TENANT_METRICS)"
            );
            assert!(
                readme.contains(&format!("`{name}`")),
                "{file} queries {name}, which README.md does not name"
            );
        }
    }
}

#[test]
fn metric_names_are_found_with_their_suffixes_removed() {
    let names = metric_names(
        r#"rate(tenantstream_stage_duration_seconds_bucket[5m]) job="tenantstream" x_tenantstream_no
        tenantstream_tenant_latency_p99_seconds{tenant="other"} tenantstream_batch_size_events_count"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "tenantstream_batch_size_events",
            "tenantstream_stage_duration_seconds",
            "tenantstream_tenant_latency_p99_seconds",
        ]
    );
}

#[test]
fn every_alert_has_a_severity_summary_runbook_and_a_test_that_fires_and_resolves() {
    let readme = read("README.md");
    let headings: BTreeSet<String> = readme
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(anchor)
        .collect();
    let tests: Vec<String> = read(RULES_TEST)
        .lines()
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut names = BTreeSet::new();
    for alert in alerts() {
        let name = &alert.name;
        assert!(names.insert(name.clone()), "{name} is defined twice");
        let severity = alert.field("severity");
        assert!(
            matches!(severity.as_deref(), Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        let summary = alert.field("summary").unwrap_or_default();
        assert!(
            summary.contains("{{") && (summary.contains("$labels.") || summary.contains("$value")),
            "{name}: the summary is not templated: {summary:?}"
        );
        let runbook = alert.field("runbook").unwrap_or_default();
        let target = runbook.strip_prefix("README.md#");
        assert_eq!(
            target,
            Some(name.to_lowercase().as_str()),
            "{name}: runbook {runbook:?}"
        );
        assert!(
            headings.contains(&name.to_lowercase()),
            "{name}: README.md has no heading `#### {name}` for its runbook"
        );

        // Each `alertname: X` line is followed by its expectation: `exp_alerts: []` (none) or
        // `exp_alerts:` and the alerts (firing). Resolved means none after a firing, in the
        // file's order (tests list their eval times in order).
        let expectations: Vec<&str> = tests
            .windows(2)
            .filter(|pair| pair[0] == format!("alertname: {name}"))
            .map(|pair| pair[1].as_str())
            .collect();
        let fires = expectations
            .iter()
            .position(|e| *e == "exp_alerts:")
            .unwrap_or_else(|| panic!("{RULES_TEST}: no test where {name} fires"));
        assert!(
            expectations[fires..].contains(&"exp_alerts: []"),
            "{RULES_TEST}: no test where {name} is resolved after it fired"
        );
    }
}

/// The panels, rows' collapsed panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

#[test]
fn dashboard_parses_and_every_panel_queries_a_datasource() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(
        variable("tenant")["definition"],
        "label_values(tenantstream_tenant_events_per_second, tenant)"
    );
    // The datasource variable defaults to the uid the compose stack provisions.
    let datasource = variable("DS_PROMETHEUS");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["current"]["value"], "prometheus");
    assert!(read(DATASOURCE).contains("uid: prometheus"));

    let panels = panels(&dashboard);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut titles = BTreeSet::new();
    for panel in panels.into_iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("a title");
        assert!(titles.insert(title), "two panels titled {title}");
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: datasource"
        );
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!targets.is_empty(), "{title}: no target");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
        }
    }
    assert!(titles.contains("Worst tenants"));
}

#[test]
fn compose_mounts_the_rules_and_provisions_grafana() {
    let compose = read("docker-compose.yml");
    for path in [
        "./deploy/prometheus/prometheus.yml",
        "./deploy/prometheus/rules.yml",
        "./deploy/grafana/provisioning",
        "./deploy/grafana/tenantstream.json",
    ] {
        assert!(
            compose.contains(path),
            "docker-compose.yml does not mount {path}"
        );
        assert!(
            support::manifest_dir().join(path).exists(),
            "{path} does not exist"
        );
    }
    let config = read("deploy/prometheus/prometheus.yml");
    assert!(
        config.contains("- rules.yml"),
        "prometheus.yml loads no rules"
    );
    assert!(support::manifest_dir()
        .join("deploy/grafana/provisioning/dashboards/tenantstream.yml")
        .exists());
}

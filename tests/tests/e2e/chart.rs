//! The Helm chart as rendered by a real `helm`: the API served over mTLS
//! with its policy, etcd reached with TLS and a user, a password file on
//! every pod, the NetworkPolicy on by default; and an API left open only
//! when asked for.

use std::process::Command;

use godwit_tests::{describe, repo_root};

fn helm(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("helm")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run helm (scripts/setup installs it): {e}"))
}

fn render(values: &str) -> anyhow::Result<std::process::Output> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values)?;
    let chart = repo_root().join("helm/godwit");
    helm(&[
        "template",
        "g",
        chart.to_str().unwrap_or_default(),
        "-f",
        file.to_str().unwrap_or_default(),
    ])
}

/// `helm lint --strict` of the chart with `values`.
fn lint(values: &str) -> anyhow::Result<std::process::Output> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values)?;
    let chart = repo_root().join("helm/godwit");
    helm(&[
        "lint",
        "--strict",
        chart.to_str().unwrap_or_default(),
        "-f",
        file.to_str().unwrap_or_default(),
    ])
}

const SECURED: &str = "
kek: { existingSecret: godwit-kek }
tls: { secretName: godwit-api-tls }
policy:
  content: |
    identities:
      - { identity: 'spiffe://platform/ops/root', role: admin }
etcd:
  endpoints: [https://etcd-0.etcd:2379]
  tls: { secretName: godwit-etcd-tls }
  auth: { user: godwit, passwordSecret: godwit-etcd-auth }
pgpass: { existingSecret: godwit-pgpass }
";

#[test]
fn the_chart_wires_tls_for_the_api_and_etcd_and_restricts_ingress() -> anyhow::Result<()> {
    let output = render(SECURED)?;
    assert!(output.status.success(), "{}", describe(&output));
    let manifests = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "kind: NetworkPolicy",
        "--tls-cert=/etc/godwit/tls/tls.crt",
        "--tls-key=/etc/godwit/tls/tls.key",
        "--client-ca=/etc/godwit/tls/ca.crt",
        "--policy=/etc/godwit/policy/policy.yaml",
        "secretName: godwit-api-tls",
        "name: g-godwit-coordinator-policy",
        "spiffe://platform/ops/root",
        "--etcd-ca=/etc/godwit/etcd-tls/ca.crt",
        "--etcd-cert=/etc/godwit/etcd-tls/tls.crt",
        "--etcd-password-file=/etc/godwit/etcd-auth/password",
        "secretName: godwit-etcd-tls",
        "name: PGPASSFILE",
        "secretName: godwit-pgpass",
        "--coordinator=https://g-godwit-coordinator.default.svc:7400",
    ] {
        assert!(
            manifests.contains(expected),
            "rendered chart lacks {expected:?}"
        );
    }
    // Both kinds of pod reach etcd the same way.
    assert_eq!(
        manifests
            .matches("--etcd-key=/etc/godwit/etcd-tls/tls.key")
            .count(),
        2
    );
    assert!(!manifests.contains("--insecure-plaintext"));
    // Two coordinators by default: one leads, one stands by.
    let coordinator = manifests
        .split("\n---")
        .find(|doc| doc.contains("kind: Deployment") && doc.contains("godwit-coordinator\n"))
        .ok_or_else(|| anyhow::anyhow!("no coordinator Deployment:\n{manifests}"))?;
    assert!(coordinator.contains("replicas: 2"), "{coordinator}");
    assert!(coordinator.contains("type: RollingUpdate"), "{coordinator}");
    // No secret value in the manifests: only names of Secrets.
    assert!(!manifests.contains("password:"));

    let lint = lint(SECURED)?;
    assert!(lint.status.success(), "{}", describe(&lint));
    Ok(())
}

#[test]
fn an_api_without_tls_renders_only_when_asked_for() -> anyhow::Result<()> {
    let refused = render("kek: { existingSecret: godwit-kek }\n")?;
    assert!(!refused.status.success(), "an open API rendered by default");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("tls.insecurePlaintext=true"),
        "{}",
        describe(&refused)
    );
    let without_policy =
        render("kek: { existingSecret: godwit-kek }\ntls: { secretName: api-tls }\n")?;
    assert!(!without_policy.status.success());
    assert!(String::from_utf8_lossy(&without_policy.stderr).contains("access policy"));

    let open = render("kek: { existingSecret: godwit-kek }\ntls: { insecurePlaintext: true }\n")?;
    assert!(open.status.success(), "{}", describe(&open));
    let manifests = String::from_utf8_lossy(&open.stdout);
    assert!(manifests.contains("--insecure-plaintext"));
    assert!(manifests.contains("--coordinator=http://"));
    assert!(
        manifests.contains("kind: NetworkPolicy"),
        "the NetworkPolicy is off by default"
    );
    Ok(())
}

/// Every option of the chart on.
const EVERY_OPTION: &str = "
kek: { existingSecret: godwit-kek }
tls: { secretName: godwit-api-tls }
policy:
  content: |
    identities:
      - { identity: 'spiffe://platform/ops/root', role: admin }
etcd:
  tls: { secretName: godwit-etcd-tls }
  auth: { user: godwit, passwordSecret: godwit-etcd-auth }
  deploy: { enabled: true, serverSecret: godwit-etcd-server, peerSecret: godwit-etcd-peer }
pgpass: { existingSecret: godwit-pgpass }
s3: { existingSecret: godwit-s3 }
staging: { enabled: true, size: 10Gi }
tmp: { sizeLimit: 2Gi }
image: { digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef }
metrics:
  workerTls: { secretName: godwit-worker-metrics-tls }
  serviceMonitor: { enabled: true, labels: { release: prometheus } }
alerts: { enabled: true, streamLagSeconds: 120 }
dashboard: { enabled: true }
worker:
  autoscaling: { enabled: true, minReplicas: 2, maxReplicas: 8 }
  podDisruptionBudget: { enabled: true }
extraEnv:
  - { name: OTEL_EXPORTER_OTLP_ENDPOINT, value: 'https://otel-collector.observability:4317' }
";

/// The least a deployment must say: the key's Secret, and an API left
/// without TLS on purpose.
const LEAST: &str = "kek: { existingSecret: godwit-kek }\ntls: { insecurePlaintext: true }\n";

/// `kubernetes-validate --strict` of rendered manifests: every object of
/// a built-in kind matches the Kubernetes API's schema (offline).
fn validate(manifests: &[u8]) -> anyhow::Result<std::process::Output> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests)?;
    Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("cannot run kubernetes-validate (scripts/setup installs it): {e}")
        })
}

/// The rendered document holding every one of `markers` must hold every
/// one of `expected`.
fn document_holding(manifests: &str, markers: &[&str], expected: &[&str]) -> anyhow::Result<()> {
    let document = manifests
        .split("\n---")
        .find(|doc| markers.iter().all(|m| doc.contains(m)))
        .ok_or_else(|| anyhow::anyhow!("no document with {markers:?}:\n{manifests}"))?;
    for line in expected {
        anyhow::ensure!(
            document.contains(line),
            "{line:?} missing from the document with {markers:?}:\n{document}"
        );
    }
    Ok(())
}

#[test]
fn the_chart_lints_and_its_manifests_match_the_kubernetes_api_least_and_every_option()
-> anyhow::Result<()> {
    for (what, values) in [("least", LEAST), ("every option", EVERY_OPTION)] {
        let output = render(values)?;
        assert!(output.status.success(), "{what}: {}", describe(&output));
        let validated = validate(&output.stdout)?;
        let said = String::from_utf8_lossy(&validated.stdout).to_string()
            + &String::from_utf8_lossy(&validated.stderr);
        assert!(validated.status.success(), "{what}: {said}");
        // Only the operator's kinds lack a built-in schema.
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains("kind ServiceMonitor") || line.contains("kind PrometheusRule"),
                "{what}: {line}"
            );
        }
        let lint = lint(values)?;
        assert!(lint.status.success(), "{what}: {}", describe(&lint));
    }
    let manifests = String::from_utf8_lossy(&render(EVERY_OPTION)?.stdout).to_string();
    // Metrics on every pod, scraped only from the monitoring namespace.
    assert_eq!(manifests.matches("- --metrics-listen=").count(), 2);
    assert_eq!(manifests.matches("kind: ServiceMonitor").count(), 2);
    assert!(manifests.contains("kind: PrometheusRule"));
    assert!(
        manifests.contains("scheme: https")
            && manifests.contains("name: godwit-api-tls\n            key: ca.crt"),
        "the coordinator's metrics are scraped over its API's TLS"
    );
    // The workers' metrics over TLS with their Secret's certificate, the
    // ServiceMonitor trusting its CA under the Service's name.
    document_holding(
        &manifests,
        &["kind: Deployment", "- godwit-worker"],
        &[
            "- --metrics-tls-cert=/etc/godwit/metrics-tls/tls.crt",
            "- --metrics-tls-key=/etc/godwit/metrics-tls/tls.key",
            "secretName: godwit-worker-metrics-tls",
        ],
    )?;
    document_holding(
        &manifests,
        &["kind: ServiceMonitor", "component: worker"],
        &[
            "scheme: https",
            "serverName: g-godwit-worker-metrics.default.svc",
            "name: godwit-worker-metrics-tls",
        ],
    )?;
    assert!(manifests.contains("godwit_stream_lag_time_seconds) > 120"));
    assert!(manifests.contains("name: g-godwit-dashboard"));
    assert_eq!(manifests.matches("kind: NetworkPolicy").count(), 3);
    assert!(manifests.contains("kubernetes.io/metadata.name: monitoring"));
    assert!(manifests.contains("clusterIP: None"));
    assert!(manifests.contains("kind: HorizontalPodAutoscaler"));
    assert!(manifests.contains("kind: PodDisruptionBudget"));
    assert!(manifests.contains("readOnlyRootFilesystem: true"));
    assert!(manifests.contains("runAsNonRoot: true"));
    // The chart's own etcd: three members over TLS, quorum kept through
    // evictions, and godwit's pods pointed at it.
    let members = "https://g-godwit-etcd-0.g-godwit-etcd:2379,https://g-godwit-etcd-1.g-godwit-etcd:2379,\
                   https://g-godwit-etcd-2.g-godwit-etcd:2379";
    assert_eq!(manifests.matches(&format!("- --etcd={members}")).count(), 2);
    document_holding(
        &manifests,
        &["kind: StatefulSet"],
        &[
            "replicas: 3",
            "--initial-cluster=g-godwit-etcd-0=https://g-godwit-etcd-0.g-godwit-etcd:2380,",
            "--client-cert-auth",
            "--peer-client-cert-auth",
            "secretName: godwit-etcd-server",
            "secretName: godwit-etcd-peer",
            "volumeClaimTemplates:",
        ],
    )?;
    document_holding(
        &manifests,
        &["kind: PodDisruptionBudget", "component: etcd"],
        &["maxUnavailable: 1"],
    )?;
    let refused = render(&format!("{LEAST}etcd: {{ deploy: {{ enabled: true }} }}\n"))?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("etcd.deploy.serverSecret"),
        "{}",
        describe(&refused)
    );
    Ok(())
}

#[test]
fn wrong_values_are_refused_by_the_schema_naming_them() -> anyhow::Result<()> {
    for (values, expected) in [
        (
            format!("{LEAST}metrics: {{ port: ninety }}\n"),
            "at '/metrics/port': got string, want integer",
        ),
        (
            format!("{LEAST}workers: {{ replicas: 3 }}\n"),
            "additional properties 'workers' not allowed",
        ),
        (
            format!("{LEAST}etcd: {{ endpoints: [etcd:2379] }}\n"),
            "/etcd/endpoints/0",
        ),
        (
            format!("{LEAST}worker: {{ concurrency: 0 }}\n"),
            "/worker/concurrency",
        ),
    ] {
        let output = render(&values)?;
        assert!(!output.status.success(), "{values} rendered");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(expected), "{values}: {said}");
    }
    Ok(())
}

/// The chart's alerting rules, as `promtool` reads a rules file.
fn rules_file() -> anyhow::Result<String> {
    let output = helm(&[
        "template",
        "g",
        repo_root().join("helm/godwit").to_str().unwrap_or_default(),
        "--set",
        "kek.existingSecret=k",
        "--set",
        "tls.insecurePlaintext=true",
        "--set",
        "alerts.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ])?;
    anyhow::ensure!(output.status.success(), "{}", describe(&output));
    let rendered = String::from_utf8_lossy(&output.stdout);
    let (_, spec) = rendered
        .split_once("spec:\n")
        .ok_or_else(|| anyhow::anyhow!("no spec in {rendered}"))?;
    Ok(spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Series of two jobs: `acme` in every kind of trouble, `calm` in none.
const ALERT_CASES: &str = r#"rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'godwit_stream_lag_time_seconds{job="acme"}'
        values: '400x10'
      - series: 'godwit_stream_lag_time_seconds{job="calm"}'
        values: '10x10'
      - series: 'godwit_verifications_total{job="acme",result="difference"}'
        values: '0 0 1x8'
      - series: 'godwit_verifications_total{job="calm",result="match"}'
        values: '0 1x9'
      - series: 'godwit_work_items{job="acme",kind="copy",state="failed"}'
        values: '0 0 0 1x7'
      - series: 'godwit_work_items{job="calm",kind="copy",state="done"}'
        values: '8x10'
      - series: 'godwit_stream_retained_wal_bytes{job="acme"}'
        values: '20000000000x10'
      - series: 'godwit_stream_retained_wal_bytes{job="calm"}'
        values: '1000000x10'
      - series: 'godwit_cutover_frozen_seconds_count{job="acme",outcome="rolled_back"}'
        values: '0 0 1x8'
      - series: 'godwit_cutover_frozen_seconds_count{job="calm",outcome="done"}'
        values: '0 0 1x8'
    alert_rule_test:
      - eval_time: 3m
        alertname: GodwitStreamLagging
      - eval_time: 8m
        alertname: GodwitStreamLagging
        exp_alerts:
          - exp_labels: {severity: warning, job: acme}
            exp_annotations:
              summary: "Job acme's change stream is 6m 40s behind the source"
              description: "The cutover waits for the stream to catch up; see godwit status for its lag and time to catch up."
      - eval_time: 8m
        alertname: GodwitWorkFailed
        exp_alerts:
          - exp_labels: {severity: critical, job: acme, kind: copy}
            exp_annotations:
              summary: "Job acme stopped: its copy work failed for good"
              description: "godwit status names the partition, range or stream and its error."
      - eval_time: 8m
        alertname: GodwitVerificationDifference
        exp_alerts:
          - exp_labels: {severity: critical, job: acme}
            exp_annotations:
              summary: "A verification of job acme found the target differing from the source"
              description: "godwit report names the tables, keys and columns."
      - eval_time: 8m
        alertname: GodwitSlotRetainsWal
        exp_alerts:
          - exp_labels: {severity: warning, job: acme}
            exp_annotations:
              summary: "Job acme's replication slot keeps 18.63GiB of WAL on the customer's server"
              description: "The stream is behind or stopped; cut over, or cancel the job to drop its slot."
      - eval_time: 8m
        alertname: GodwitCutoverRolledBack
        exp_alerts:
          - exp_labels: {severity: warning, job: acme}
            exp_annotations:
              summary: "A cutover of job acme was rolled back; the source is authoritative again"
              description: "godwit status shows the last cutover's error."
"#;

#[test]
fn the_alerting_rules_pass_promtool_and_fire_for_the_job_in_trouble_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("rules.yaml"), rules_file()?)?;
    std::fs::write(dir.path().join("cases.yaml"), ALERT_CASES)?;
    let promtool = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run promtool (scripts/setup installs it): {e}"))
    };
    let checked = promtool(&["check", "rules", "rules.yaml"])?;
    assert!(checked.status.success(), "{}", describe(&checked));
    assert!(String::from_utf8_lossy(&checked.stdout).contains("SUCCESS: 5 rules found"));
    let tested = promtool(&["test", "rules", "cases.yaml"])?;
    assert!(tested.status.success(), "{}", describe(&tested));
    Ok(())
}

#[test]
fn the_dashboard_is_shipped_and_every_panel_queries_godwit_metrics_in_valid_promql()
-> anyhow::Result<()> {
    let output = render(&format!("{LEAST}dashboard: {{ enabled: true }}\n"))?;
    assert!(output.status.success(), "{}", describe(&output));
    let manifests = String::from_utf8_lossy(&output.stdout);
    assert!(
        manifests.contains("grafana_dashboard: \"1\""),
        "{manifests}"
    );
    assert!(manifests.contains("\"uid\": \"godwit-migrations\""));
    let text = std::fs::read_to_string(repo_root().join("helm/godwit/files/dashboard.json"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    assert!(panels.len() >= 10, "{dashboard}");
    // Each panel's query, checked by promtool as a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, panel) in panels.iter().enumerate() {
        let expr = panel["targets"][0]["expr"].as_str().unwrap_or_default();
        assert!(
            expr.contains("godwit_"),
            "panel {i} queries no godwit metric: {panel}"
        );
        rules.push_str(&format!(
            "      - record: godwit:panel_{i}\n        expr: {}\n",
            serde_json::Value::String(expr.to_owned())
        ));
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("panels.yaml"), rules)?;
    let checked = Command::new("promtool")
        .args(["check", "rules", "panels.yaml"])
        .current_dir(dir.path())
        .output()?;
    assert!(checked.status.success(), "{}", describe(&checked));
    Ok(())
}

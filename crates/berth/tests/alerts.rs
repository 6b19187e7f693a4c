//! The Prometheus alert rules in deploy/prometheus: promtool accepts them, their unit tests
//! pass, every alert has a runbook section and tests that show it firing and not firing,
//! and on the metrics a real, deliberately damaged berth exports, the integrity alerts
//! fire (and nothing fires while it is healthy).
//!
//! Needs `promtool` (Debian package `prometheus`; scripts/test installs it).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use support::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rules_file() -> PathBuf {
    repo_root().join("deploy/prometheus/berth-alerts.yml")
}

fn rules_test_file() -> PathBuf {
    repo_root().join("deploy/prometheus/berth-alerts.test.yml")
}

fn promtool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("promtool");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`promtool` is not installed (not found on PATH). The alert tests need it: \
         apt-get install -y prometheus (scripts/test installs it)"
    );
}

struct Out {
    cmdline: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!(
            "$ {}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `program args` with `stdin`, killing it and panicking if it takes longer than
/// `limit`.
fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Out {
    let cmdline = format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmdline}: {e}"));
    if let Some(bytes) = stdin {
        let mut w = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
    }
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmdline}: did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        cmdline,
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn promtool_checks_the_rules() {
    let rules = rules_file();
    let out = run(
        &promtool(),
        &["check", "rules", rules.to_str().unwrap()],
        None,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.all());
    assert!(out.stdout.contains("SUCCESS"), "{}", out.all());
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let tests = rules_test_file();
    let out = run(
        &promtool(),
        &["test", "rules", tests.to_str().unwrap()],
        None,
        Duration::from_secs(50),
    );
    assert!(out.status.success(), "{}", out.all());
    assert!(out.stdout.contains("SUCCESS"), "{}", out.all());
}

/// GitHub's heading anchor: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The value of `key: value` on a line of `block`, quotes removed.
fn field<'a>(block: &'a str, key: &str) -> Option<&'a str> {
    block.lines().find_map(|l| {
        l.trim()
            .strip_prefix(key)
            .and_then(|v| v.strip_prefix(':'))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\''))
    })
}

#[test]
fn every_alert_has_labels_annotations_a_runbook_section_and_both_kinds_of_test() {
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let tests = std::fs::read_to_string(rules_test_file()).unwrap();
    let doc = std::fs::read_to_string(repo_root().join("docs/how-to/alerts.md")).unwrap();
    let sections: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();

    assert!(rules.contains("  - name: berth\n"), "the group is named berth");
    let mut names = BTreeSet::new();
    for block in rules.split("      - alert: ").skip(1) {
        let name = block.lines().next().unwrap().trim().to_string();
        let severity = field(block, "severity").unwrap_or_else(|| panic!("{name}: no severity"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            assert!(
                field(block, key).is_some_and(|v| !v.is_empty()),
                "{name}: no {key}"
            );
        }
        let runbook = field(block, "runbook").unwrap_or_else(|| panic!("{name}: no runbook"));
        let section = runbook
            .strip_prefix("docs/how-to/alerts.md#")
            .unwrap_or_else(|| panic!("{name}: runbook {runbook} is not docs/how-to/alerts.md#..."));
        assert_eq!(section, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            sections.contains(section),
            "{name}: docs/how-to/alerts.md has no section #{section} (sections: {sections:?})"
        );
        names.insert(name);
    }
    let expected = [
        "BerthDown",
        "BerthIntegrityProblems",
        "BerthCorruptReads",
        "BerthScrubNotRecent",
        "BerthGcNotRecent",
        "BerthProbeFailing",
        "BerthProbeStale",
        "BerthServerErrors",
        "BerthCatalogErrors",
        "BerthUpstreamErrors",
        "BerthServingStale",
        "BerthCacheNearBudget",
        "BerthUploadsPiling",
    ];
    assert_eq!(
        names,
        expected.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );

    // In the unit tests, each alert is expected both firing and not firing somewhere.
    let lines: Vec<&str> = tests.lines().collect();
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.trim().strip_prefix("alertname: ") else {
            continue;
        };
        match lines.get(i + 1).map(|l| l.trim()) {
            Some("exp_alerts: []") => quiet.insert(name.to_string()),
            Some("exp_alerts:") => firing.insert(name.to_string()),
            other => panic!("alertname: {name} is followed by {other:?}"),
        };
    }
    for name in &names {
        assert!(firing.contains(name), "no unit test shows {name} firing");
        assert!(quiet.contains(name), "no unit test shows {name} not firing");
    }
}

// ---------------------------------------------------------------------------------------
// Real metrics

/// One sample of an exposition: metric name, labels (in order), value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the sample lines of a Prometheus/OpenMetrics text exposition (comments,
/// timestamps and exemplars are skipped).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            loop {
                // label name
                let start = chars.peek().map(|(i, _)| *i).unwrap();
                let mut end = start;
                let mut closed = false;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        end = i;
                        break;
                    }
                    if c == '}' {
                        closed = true;
                        end = i;
                        break;
                    }
                }
                if closed {
                    rest = &r[end + 1..];
                    break;
                }
                let key = r[start..end].trim().to_string();
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next().unwrap_or_else(|| panic!("unterminated: {line}"));
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c) => value.push(c),
                            None => panic!("{line}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some((_, ',')) => {
                        if chars.peek().map(|(_, c)| *c) == Some('}') {
                            let (i, _) = chars.next().unwrap();
                            rest = &r[i + 1..];
                            break;
                        }
                    }
                    Some((i, '}')) => {
                        rest = &r[i + 1..];
                        break;
                    }
                    other => panic!("{line}: unexpected {other:?}"),
                }
            }
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The series Prometheus stores for `s` scraped from `instance` by job `berth` (default
/// honor_labels: false): berth's own `job` label becomes `exported_job`.
fn scraped_series(s: &Sample, instance: &str) -> String {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &s.labels {
        let k = match k.as_str() {
            "job" => "exported_job".to_string(),
            "instance" => "exported_instance".to_string(),
            k => k.to_string(),
        };
        labels.insert(k, v.clone());
    }
    labels.insert("job".into(), "berth".into());
    labels.insert("instance".into(), instance.into());
    series_selector(&s.name, &labels)
}

fn series_selector(name: &str, labels: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// A YAML single-quoted scalar.
fn yq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn metrics(s: &TestServer) -> String {
    let r = get(&s.url("/metrics"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// `promtool check metrics` reads the exposition. Lint findings (exit status 3; it reads
/// the classic text format, so OpenMetrics counters come out as "no help text") are
/// fine; parse errors (exit status 1, "error while linting: ... parsing error") are not.
fn assert_promtool_parses(promtool: &Path, exposition: &str) {
    let out = run(
        promtool,
        &["check", "metrics"],
        Some(exposition.as_bytes()),
        Duration::from_secs(20),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    let errors = text
        .lines()
        .any(|l| l.to_lowercase().starts_with("error") || l.contains("parsing error"));
    assert!(
        matches!(out.status.code(), Some(0 | 3)) && !errors,
        "promtool cannot parse berth's /metrics:\n{}\n--- exposition\n{exposition}",
        out.all()
    );
}

fn blob_file(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

#[test]
fn on_real_metrics_of_a_damaged_berth_the_integrity_alerts_fire() {
    let promtool = promtool();
    let s = TestServer::start(
        BIN,
        "[scrub]\nschedule = \"off\"\n[gc]\nschedule = \"off\"\n[retention]\nschedule = \"off\"\n",
    );
    let b = s.url("");
    let scrub = |extra: &[&str]| {
        run(
            Path::new(BIN),
            &[&["scrub", "--server", b.as_str()][..], extra].concat(),
            None,
            Duration::from_secs(30),
        )
    };

    // A healthy registry, scrubbed clean: what Prometheus scrapes first.
    let (_, manifest) = push_image(&b, "team/app", "v1", 7, 3);
    let layers: Vec<String> = serde_json::from_slice::<serde_json::Value>(&manifest).unwrap()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let out = scrub(&[]);
    assert!(
        out.status.success(),
        "a healthy registry scrubs clean: {}",
        out.all()
    );
    let healthy_text = metrics(&s);

    // The damage: one layer overwritten with zeros (same size), one cut in half and then
    // pulled (404, counted as a refused read), then a scrub that finds both.
    let data = s.blob_root();
    let zeroed = blob_file(&data, &layers[0]);
    let len = std::fs::metadata(&zeroed).unwrap().len() as usize;
    std::fs::write(&zeroed, vec![0u8; len]).unwrap();
    let cut = blob_file(&data, &layers[1]);
    let len = std::fs::metadata(&cut).unwrap().len() as usize;
    std::fs::write(&cut, vec![0u8; len / 2]).unwrap();
    let r = get(&format!("{b}/v2/team/app/blobs/{}", layers[1]));
    assert_eq!(r.status, 404, "a cut blob is refused: {}", r.text());
    let out = scrub(&[]);
    assert!(!out.status.success(), "damage fails the scrub: {}", out.all());
    assert!(out.stdout.contains("DAMAGE"), "{}", out.all());
    let damaged_text = metrics(&s);

    assert_promtool_parses(&promtool, &healthy_text);
    assert_promtool_parses(&promtool, &damaged_text);

    let healthy = parse_exposition(&healthy_text);
    let damaged = parse_exposition(&damaged_text);
    for kind in ["blob_digest", "blob_size"] {
        let labels = [("kind", kind), ("repository", "hosted")];
        assert_eq!(
            value_of(&healthy, "berth_integrity_problems", &labels),
            Some(0.0),
            "{healthy_text}"
        );
        assert!(
            value_of(&damaged, "berth_integrity_problems", &labels).is_some_and(|v| v >= 1.0),
            "the scrub counts {kind}: {damaged_text}"
        );
    }
    assert!(
        value_of(
            &damaged,
            "berth_blob_read_errors_total",
            &[("problem", "size_mismatch")]
        )
        .is_some_and(|v| v >= 1.0),
        "the refused read is counted: {damaged_text}"
    );

    // Prometheus's view: the healthy scrape for 20 minutes, then the damaged one for 20,
    // every sample as a scrape of job "berth" would store it.
    let instance = s.addr.clone();
    let mut series: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for (i, samples) in [&healthy, &damaged].into_iter().enumerate() {
        for smp in samples.iter().filter(|s| s.value.is_finite()) {
            let e = series.entry(scraped_series(smp, &instance)).or_default();
            if i == 0 {
                e.0 = Some(smp.value);
            } else {
                e.1 = Some(smp.value);
            }
        }
    }
    let mut input = format!(
        "      - series: {}\n        values: '1x40'\n",
        yq(&format!("up{{instance=\"{instance}\",job=\"berth\"}}"))
    );
    for (sel, (before, after)) in &series {
        // 20 samples (0m..19m), then 21 (20m..40m); `_` for none.
        let before = before.map_or("_x20".to_string(), |v| format!("{v}x19"));
        let after = after.map_or(String::new(), |v| format!(" {v}x20"));
        input.push_str(&format!(
            "      - series: {}\n        values: {}\n",
            yq(sel),
            yq(&format!("{before}{after}"))
        ));
    }

    // What must fire on the damaged scrape, and nothing else: one BerthIntegrityProblems
    // per (kind, repository) above 0, one BerthCorruptReads per new or grown counter.
    let mut expected = BTreeSet::new();
    for smp in damaged
        .iter()
        .filter(|s| s.name == "berth_integrity_problems" && s.value > 0.0)
    {
        let label = |k: &str| smp.labels.iter().find(|(n, _)| n == k).unwrap().1.clone();
        let labels = BTreeMap::from([
            ("alertname".to_string(), "BerthIntegrityProblems".to_string()),
            ("alertstate".into(), "firing".into()),
            ("instance".into(), instance.clone()),
            ("kind".into(), label("kind")),
            ("repository".into(), label("repository")),
            ("severity".into(), "critical".into()),
        ]);
        expected.insert(series_selector("ALERTS", &labels));
    }
    for smp in damaged
        .iter()
        .filter(|s| s.name == "berth_blob_read_errors_total")
    {
        let problem = smp.labels.iter().find(|(n, _)| n == "problem").unwrap().1.clone();
        let before = value_of(&healthy, &smp.name, &[("problem", problem.as_str())]).unwrap_or(0.0);
        if smp.value > before {
            let labels = BTreeMap::from([
                ("alertname".to_string(), "BerthCorruptReads".to_string()),
                ("alertstate".into(), "firing".into()),
                ("instance".into(), instance.clone()),
                ("problem".into(), problem),
                ("severity".into(), "critical".into()),
            ]);
            expected.insert(series_selector("ALERTS", &labels));
        }
    }
    for must in [
        "alertname=\"BerthIntegrityProblems\",alertstate=\"firing\",instance=\"INSTANCE\",kind=\"blob_digest\",repository=\"hosted\"",
        "alertname=\"BerthIntegrityProblems\",alertstate=\"firing\",instance=\"INSTANCE\",kind=\"blob_size\",repository=\"hosted\"",
        "alertname=\"BerthCorruptReads\",alertstate=\"firing\",instance=\"INSTANCE\",problem=\"size_mismatch\"",
    ] {
        let must = must.replace("INSTANCE", &instance);
        assert!(
            expected.iter().any(|e| e.contains(&must)),
            "{must} not among {expected:?}"
        );
    }
    eprintln!("expected to fire on the damaged scrape: {expected:#?}");
    let exp_samples: String = expected
        .iter()
        .map(|sel| format!("          - labels: {}\n            value: 1\n", yq(sel)))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let test_file = dir.path().join("real-metrics.test.yml");
    let rules = rules_file().canonicalize().unwrap();
    std::fs::write(
        &test_file,
        format!(
            "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - name: real berth metrics, healthy then damaged\n    interval: 1m\n    input_series:\n{input}    promql_expr_test:\n      - expr: 'ALERTS{{alertstate=\"firing\"}}'\n        eval_time: 19m\n        exp_samples: []\n      - expr: 'ALERTS{{alertstate=\"firing\"}}'\n        eval_time: 25m\n        exp_samples:\n{exp_samples}",
            yq(rules.to_str().unwrap())
        ),
    )
    .unwrap();
    let out = run(
        &promtool,
        &["test", "rules", test_file.to_str().unwrap()],
        None,
        Duration::from_secs(40),
    );
    assert!(
        out.status.success(),
        "{}\n--- {}\n{}",
        out.all(),
        test_file.display(),
        std::fs::read_to_string(&test_file).unwrap()
    );
}

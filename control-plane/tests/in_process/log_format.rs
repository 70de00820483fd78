//! `meshd --log-format json`: every stderr line is one JSON object a log pipeline can read,
//! with the event's fields at the top level; `text` (the default) stays for people.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Starts `meshd serve` on ephemeral ports with `format`, returns its stderr lines up to and
/// including the one saying it is ready, then stops it.
fn serve_until_ready(format: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshd"));
    if let Some(f) = format {
        cmd.args(["--log-format", f]);
    }
    let mut child = cmd
        .args(["serve", "--bind", "127.0.0.1"])
        .args([
            "--xds-port",
            "0",
            "--xds-tls-port",
            "0",
            "--admin-port",
            "0",
        ])
        .arg("--config-dir")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("MESHD_LOG_FORMAT")
        .env("MESHD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshd runs");
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let ready = line.contains("meshd ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.last().is_some_and(|l| l.contains("meshd ready")),
        "meshd never said it was ready: {lines:#?}"
    );
    lines
}

#[test]
fn json_logs_are_one_object_per_line_with_the_fields_on_top() {
    let lines = serve_until_ready(Some("json"));
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
    }
    let ready: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(ready["message"], "meshd ready", "{ready}");
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert!(
        ready["admin"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ready}"
    );
}

#[test]
fn text_logs_are_the_default() {
    let lines = serve_until_ready(None);
    assert!(lines.iter().all(|l| !l.starts_with('{')), "{lines:#?}");
}

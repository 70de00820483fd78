//! `meshd proxy-status` and `meshd proxy-config`: read the admin API like istioctl does.

use anyhow::{Context, anyhow};
use meshd_xds::resource::short_type;
use serde_json::Value;
use std::process::ExitCode;

async fn get_json(url: &str) -> anyhow::Result<Value> {
    let resp = reqwest::get(url)
        .await
        .with_context(|| format!("cannot reach the meshd admin API at {url}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        return Err(anyhow!("{url}: {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).with_context(|| format!("{url}: not JSON"))
}

const COLUMNS: [&str; 5] = ["CDS", "LDS", "EDS", "RDS", "SDS"];

pub fn status_table(syncz: &Value) -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "CDS".into(),
        "LDS".into(),
        "EDS".into(),
        "RDS".into(),
        "SDS".into(),
        "IDENTITY".into(),
    ]];
    for p in syncz.as_array().into_iter().flatten() {
        let mut row = vec![p["proxy_id"].as_str().unwrap_or("").to_string()];
        for col in COLUMNS {
            let cell = p["types"]
                .as_object()
                .into_iter()
                .flatten()
                .find(|(url, _)| short_type(url) == col)
                .map(|(_, t)| t["status"].as_str().unwrap_or("").to_string())
                .unwrap_or_else(|| "NOT SENT".into());
            row.push(cell);
        }
        row.push(p["identity"].as_str().unwrap_or("").to_string());
        rows.push(row);
    }
    render(&rows)
}

fn render(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn proxy_status(admin: &str) -> anyhow::Result<ExitCode> {
    let syncz = get_json(&format!("{}/debug/syncz", admin.trim_end_matches('/'))).await?;
    print!("{}", status_table(&syncz));
    Ok(ExitCode::SUCCESS)
}

pub async fn proxy_config(admin: &str, proxy: &str, output: &str) -> anyhow::Result<ExitCode> {
    let url = format!(
        "{}/debug/config_dump?proxy={}",
        admin.trim_end_matches('/'),
        proxy
    );
    let dump = get_json(&url).await?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&dump)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![vec!["TYPE".to_string(), "NAME".into(), "VERSION".into()]];
    for (type_url, t) in dump["types"].as_object().into_iter().flatten() {
        for r in t["resources"].as_array().into_iter().flatten() {
            rows.push(vec![
                short_type(type_url).to_string(),
                r["name"].as_str().unwrap_or("").to_string(),
                t["version"].as_str().unwrap_or("").to_string(),
            ]);
        }
    }
    print!("{}", render(&rows));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_each_type_status() {
        let syncz = serde_json::json!([{
            "proxy_id": "sidecar~1~a.ns~ns.svc.cluster.local",
            "identity": "spiffe://cluster.local/ns/ns/sa/a",
            "types": {
                "type.googleapis.com/envoy.config.cluster.v3.Cluster": {"status": "SYNCED"},
                "type.googleapis.com/envoy.config.listener.v3.Listener": {"status": "NACKED"}
            }
        }]);
        let t = status_table(&syncz);
        let line = t.lines().nth(1).unwrap();
        assert!(line.contains("SYNCED  NACKED  NOT SENT"), "{t}");
    }
}

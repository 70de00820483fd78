//! `meshd proxy-status` and `meshd proxy-config`: read the admin API like istioctl does, and
//! [`AdminClient`], the admin API client every such command (also `meshd ca`) shares: it sends
//! a bearer token when it has one, so off-host callers pass the admin API's check.

use anyhow::{Context, anyhow};
use clap::Args;
use meshd_xds::resource::short_type;
use secrecy::ExposeSecret;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where the admin API is and how to prove an off-host caller is an administrator.
#[derive(Args)]
pub struct AdminArgs {
    #[arg(long, default_value = "http://127.0.0.1:15014")]
    pub admin: String,
    /// Bearer token for the admin API (Kubernetes mode: checked by TokenReview and a
    /// SubjectAccessReview of `debug.meshd.io`). Default: the token of the kubeconfig's
    /// current user, if it has one (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`); none on
    /// loopback works without one.
    #[arg(long, env = "MESHD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The kubeconfig whose current user's token is sent when `--token` is not given.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// The admin API of one server, and the token that proves the caller an administrator.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// `--token`, else the kubeconfig user's token (`--kubeconfig`, else `KUBECONFIG` or
    /// `~/.kube/config` when there is one), else none.
    pub fn new(args: &AdminArgs) -> anyhow::Result<AdminClient> {
        let token = match (&args.token, &args.kubeconfig) {
            (Some(t), _) => Some(t.trim().to_string()).filter(|t| !t.is_empty()),
            (None, Some(path)) => kubeconfig_token(Some(path))?,
            (None, None) => kubeconfig_token(None).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "no token from the default kubeconfig");
                None
            }),
        };
        Ok(AdminClient {
            base: args.admin.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// `base` with no token.
    pub fn anonymous(base: &str) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, with the bearer token when there is one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// GET `path` as JSON; a refusal or any other non-2xx status is an error with its reason.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("cannot reach the meshd admin API at {url}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            return Err(anyhow!("{url}: {status}: {}", body.trim()));
        }
        serde_json::from_str(&body).with_context(|| format!("{url}: not JSON"))
    }
}

/// The bearer token of the current user of a kubeconfig (`path`, else `KUBECONFIG` or
/// `~/.kube/config`): `token`, else the content of `tokenFile`.
pub fn kubeconfig_token(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    use ::kube::config::Kubeconfig;
    let kc = match path {
        Some(p) => Kubeconfig::read_from(p)
            .map_err(|e| anyhow!("reading kubeconfig {}: {e}", p.display()))?,
        None => Kubeconfig::read().map_err(|e| anyhow!("reading the kubeconfig: {e}"))?,
    };
    let user = kc
        .current_context
        .as_deref()
        .and_then(|c| kc.contexts.iter().find(|n| n.name == c))
        .and_then(|n| n.context.as_ref())
        .and_then(|c| c.user.as_deref());
    let Some(auth) = user
        .and_then(|u| kc.auth_infos.iter().find(|a| a.name == u))
        .and_then(|a| a.auth_info.as_ref())
    else {
        return Ok(None);
    };
    if let Some(t) = &auth.token {
        return Ok(Some(t.expose_secret().trim().to_string()).filter(|t| !t.is_empty()));
    }
    match &auth.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the kubeconfig user's tokenFile {f}"))?;
            Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()))
        }
        None => Ok(None),
    }
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

pub async fn proxy_status(admin: &AdminClient) -> anyhow::Result<ExitCode> {
    let syncz = admin.get_json("/debug/syncz").await?;
    print!("{}", status_table(&syncz));
    Ok(ExitCode::SUCCESS)
}

pub async fn proxy_config(
    admin: &AdminClient,
    proxy: &str,
    output: &str,
) -> anyhow::Result<ExitCode> {
    let dump = admin
        .get_json(&format!("/debug/config_dump?proxy={proxy}"))
        .await?;
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

    #[test]
    fn token_from_the_kubeconfig_user() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let kubeconfig = |user: &str| {
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: https://127.0.0.1:6443}}\ncontexts:\n- name: c\n  context: {{cluster: k, user: {user}}}\nusers:\n- name: inline\n  user: {{token: t0k}}\n- name: file\n  user: {{tokenFile: {}}}\n- name: cert\n  user: {{}}\n",
                file.display()
            )
        };
        let path = dir.path().join("config");
        for (user, want) in [
            ("inline", Some("t0k")),
            ("file", Some("from-file")),
            ("cert", None),
            ("nobody", None),
        ] {
            std::fs::write(&path, kubeconfig(user)).unwrap();
            assert_eq!(
                kubeconfig_token(Some(&path)).unwrap().as_deref(),
                want,
                "{user}"
            );
        }
        assert!(kubeconfig_token(Some(&dir.path().join("missing"))).is_err());
    }
}

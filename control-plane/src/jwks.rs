//! The JWKS fetcher: the I/O edge of RequestAuthentication. Between the config sources and the
//! snapshot builder, it fetches every JWK set the accepted config names (a `jwksUri`, or the
//! issuer's OpenID discovery document when a rule names no keys), as istiod does, and publishes
//! the config with the keys in it (`MeshConfig::jwks`), so the generator stays a pure function
//! of its input and proxies get the keys inline.
//!
//! Every byte from the network is hostile: bodies are bounded, each fetch has the rule's
//! timeout, a body that is not a JWK set is a failure. A failure keeps the last good keys,
//! is retried soon, shows in `/debug/configz` (`jwks`) and counts in
//! `pilot_jwks_resolver_network_fetch_fail_total`; good keys are refreshed periodically.

use meshd_model::MeshConfig;
use meshd_model::jwt::{JwksByLocation, JwksLocation, MAX_JWKS_BYTES, check_jwks};
use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The supervised task's name.
pub const JWKS_TASK: &str = "jwks-fetcher";

/// Fetch outcomes since start (Istio's names on `/metrics`).
#[derive(Debug, Default)]
pub struct JwksMetrics {
    pub fetched: Counter,
    pub failed: Counter,
}

impl JwksMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pilot_jwks_resolver_network_fetch_success",
            "Total number of successfully network fetch by pilot jwks resolver",
            self.fetched.clone(),
        );
        registry.register(
            "pilot_jwks_resolver_network_fetch_fail",
            "Total number of failed network fetch by pilot jwks resolver",
            self.failed.clone(),
        );
    }
}

#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// How often good keys are fetched again (istiod: 20 minutes).
    pub refresh: Duration,
    /// How soon a failed fetch is tried again.
    pub retry: Duration,
    pub max_bytes: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            refresh: Duration::from_secs(20 * 60),
            retry: Duration::from_secs(10),
            max_bytes: MAX_JWKS_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("fetching {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("fetching {url}: the body is over {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error("fetching {url}: timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: not a JWK set: {reason}")]
    NotJwks { url: String, reason: String },
    #[error("{url}: the OpenID discovery document has no `jwks_uri` string")]
    NoJwksUri { url: String },
}

/// GET `url`, reading at most `max` bytes of the body.
async fn get_bounded(
    client: &reqwest::Client,
    url: &str,
    max: usize,
) -> Result<String, FetchError> {
    let http = |source| FetchError::Http {
        url: url.into(),
        source,
    };
    let response = client.get(url).send().await.map_err(http)?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: url.into(),
            status: response.status().as_u16(),
        });
    }
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > max {
            return Err(FetchError::TooLarge {
                url: url.into(),
                max,
            });
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| FetchError::NotJwks {
        url: url.into(),
        reason: "not UTF-8".into(),
    })
}

/// One JWK set, checked; the discovery document first when the location is one.
pub async fn fetch(
    client: &reqwest::Client,
    location: &JwksLocation,
    timeout: Duration,
    max_bytes: usize,
) -> Result<String, FetchError> {
    let work = async {
        let url = match location {
            JwksLocation::Uri(u) => u.clone(),
            JwksLocation::Discovery(doc_url) => {
                let doc = get_bounded(client, doc_url, max_bytes).await?;
                serde_json::from_str::<serde_json::Value>(&doc)
                    .ok()
                    .and_then(|d| d.get("jwks_uri")?.as_str().map(String::from))
                    .ok_or_else(|| FetchError::NoJwksUri {
                        url: doc_url.clone(),
                    })?
            }
        };
        let body = get_bounded(client, &url, max_bytes).await?;
        check_jwks(&body).map_err(|reason| FetchError::NotJwks {
            url: url.clone(),
            reason,
        })?;
        Ok(body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                url: location.to_string(),
                timeout,
            })
        })
}

/// The config as published: `raw` with the keys of the sets it names.
fn with_keys(raw: &Arc<MeshConfig>, fetched: &JwksByLocation) -> Arc<MeshConfig> {
    if fetched.is_empty() && raw.jwks.is_empty() {
        return raw.clone();
    }
    let mut config = (**raw).clone();
    config.jwks = fetched.clone();
    Arc::new(config)
}

/// Runs until `raw` closes: each config from the sources goes out on `out` with its keys,
/// fetched now for a set not seen before and refreshed when due.
pub async fn run(
    mut raw: watch::Receiver<Arc<MeshConfig>>,
    out: watch::Sender<Arc<MeshConfig>>,
    metrics: Arc<JwksMetrics>,
    opts: FetchOptions,
) {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("JWKS fetcher: no HTTP client: {e}");
            return;
        }
    };
    let mut fetched = JwksByLocation::new();
    let mut due: BTreeMap<JwksLocation, Instant> = BTreeMap::new();
    loop {
        let config = raw.borrow_and_update().clone();
        let wanted = config.jwks_to_fetch();
        fetched.retain(|at, _| wanted.contains_key(at));
        due.retain(|at, _| wanted.contains_key(at));
        let now = Instant::now();
        let to_fetch: Vec<(JwksLocation, Duration)> = wanted
            .iter()
            .filter(|(at, _)| due.get(*at).is_none_or(|d| *d <= now))
            .map(|(at, t)| (at.clone(), *t))
            .collect();
        let results = futures::future::join_all(to_fetch.iter().map(|(at, timeout)| {
            let client = &client;
            async move { (at, fetch(client, at, *timeout, opts.max_bytes).await) }
        }))
        .await;
        for (at, result) in results {
            let entry = fetched.entry(at.clone()).or_default();
            match result {
                Ok(keys) => {
                    metrics.fetched.inc();
                    entry.keys = Some(keys);
                    entry.error = None;
                    due.insert(at.clone(), Instant::now() + opts.refresh);
                }
                Err(e) => {
                    metrics.failed.inc();
                    tracing::warn!(jwks = %at, "JWKS fetch failed: {e}; last good keys kept");
                    entry.error = Some(e.to_string());
                    due.insert(at.clone(), Instant::now() + opts.retry);
                }
            }
        }
        let published = with_keys(&config, &fetched);
        out.send_if_modified(|current| {
            let changed = **current != *published;
            if changed {
                *current = published;
            }
            changed
        });
        let next = due.values().min().copied();
        tokio::select! {
            changed = raw.changed() => if changed.is_err() { return },
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// The fetch state for `/debug/configz`: each set, whether keys are in force, the last error.
pub fn status(config: &MeshConfig) -> serde_json::Value {
    config
        .jwks_to_fetch()
        .keys()
        .map(|at| {
            let f = config.jwks.get(at);
            serde_json::json!({
                "location": at.to_string(),
                "keys": f.is_some_and(|f| f.keys.is_some()),
                "error": f.and_then(|f| f.error.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;

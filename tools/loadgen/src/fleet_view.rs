//! What the fleet reads (`fleet.rs`): an Envoy's own `/stats` and `/config_dump` JSON, meshd's
//! `/debug/syncz`, the sync criterion over them, and the DestinationRule edit it times.

use serde_json::Value;
use std::collections::HashMap;

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// What one Envoy's admin endpoint shows.
#[derive(Clone, Debug, Default)]
pub(crate) struct EnvoyView {
    /// Why its admin endpoint did not answer (still starting, or stuck).
    pub(crate) unreachable: Option<String>,
    pub(crate) connected: bool,
    pub(crate) cds: String,
    pub(crate) lds: String,
    pub(crate) warming_clusters: u64,
    pub(crate) warming_listeners: u64,
}

/// What meshd's `/debug/syncz` shows for one node.
#[derive(Clone, Debug, Default)]
pub(crate) struct MeshdView {
    pub(crate) cds_sent: String,
    pub(crate) lds_sent: String,
    /// Types not SYNCED, with their status and error.
    pub(crate) not_synced: Vec<String>,
}

impl EnvoyView {
    /// Envoy's `/stats?format=json` answer, filtered to the stats named here.
    pub(crate) fn from_stats(body: &Value) -> EnvoyView {
        let mut v = EnvoyView::default();
        for s in body["stats"].as_array().into_iter().flatten() {
            let value = &s["value"];
            let n = value.as_u64().unwrap_or(0);
            let text = || value.as_str().unwrap_or("").to_string();
            match s["name"].as_str().unwrap_or("") {
                "control_plane.connected_state" => v.connected = n == 1,
                "cluster_manager.cds.version_text" => v.cds = text(),
                "listener_manager.lds.version_text" => v.lds = text(),
                "cluster_manager.warming_clusters" => v.warming_clusters = n,
                "listener_manager.total_listeners_warming" => v.warming_listeners = n,
                _ => {}
            }
        }
        v
    }

    /// Synced against what meshd shows for this node (the module doc of `fleet.rs`).
    pub(crate) fn synced_with(&self, m: Option<&MeshdView>) -> bool {
        let Some(m) = m else { return false };
        self.connected
            && self.warming_clusters == 0
            && self.warming_listeners == 0
            && !m.cds_sent.is_empty()
            && !m.lds_sent.is_empty()
            && self.cds == m.cds_sent
            && self.lds == m.lds_sent
            && m.not_synced.is_empty()
    }
}

impl MeshdView {
    /// meshd's `/debug/syncz` answer, by node id.
    pub(crate) fn from_syncz(body: &Value) -> HashMap<String, MeshdView> {
        let mut out = HashMap::new();
        for p in body.as_array().into_iter().flatten() {
            let Some(id) = p["proxy_id"].as_str() else {
                continue;
            };
            let types = p["types"].as_object().cloned().unwrap_or_default();
            let sent = |t: &str| {
                types
                    .get(t)
                    .and_then(|v| v["sent_version"].as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let not_synced = types
                .iter()
                .filter(|(_, v)| v["status"] != "SYNCED")
                .map(|(t, v)| {
                    let short = t.rsplit('.').next().unwrap_or(t);
                    format!("{short} {} {}", v["status"], v["error"])
                })
                .collect();
            out.insert(
                id.to_string(),
                MeshdView {
                    cds_sent: sent(CLUSTER),
                    lds_sent: sent(LISTENER),
                    not_synced,
                },
            );
        }
        out
    }
}

/// The `max_connections` of every circuit-breaker threshold of the clusters in an Envoy
/// `/config_dump?resource=dynamic_active_clusters` answer.
pub(crate) fn max_connections_in(dump: &Value) -> Vec<u64> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["cluster"]["circuit_breakers"]["thresholds"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| t["max_connections"].as_u64())
        .collect()
}

/// The services file with its first `count` `maxConnections` each raised by 1000 (the
/// DestinationRules of services 0..count: the file lists services in order), and the new values.
pub(crate) fn bump_max_connections(text: &str, count: usize) -> Option<(String, Vec<u64>)> {
    let key = "maxConnections: ";
    let mut out = String::with_capacity(text.len() + 8 * count);
    let mut values = Vec::with_capacity(count);
    let mut rest = text;
    for _ in 0..count {
        let start = rest.find(key)? + key.len();
        let digits = rest[start..].bytes().take_while(u8::is_ascii_digit).count();
        let new = rest[start..start + digits].parse::<u64>().ok()? + 1000;
        out.push_str(&rest[..start]);
        out.push_str(&new.to_string());
        values.push(new);
        rest = &rest[start + digits..];
    }
    out.push_str(rest);
    Some((out, values))
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;

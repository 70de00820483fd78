//! Workload selectors (the label match every selecting kind shares) and PeerAuthentication, by
//! Istio's documented rules.

use super::{Check, port};
use crate::networking::Labels;
use crate::security::PeerAuthentication;

const MAX_SELECTOR_LABELS: usize = 4096;
const MAX_LABEL_VALUE_LEN: usize = 63;

/// A selector's labels: exact matches only (no `*`), no empty key.
pub(crate) fn labels(labels: &Labels, what: &str) -> Check {
    if labels.len() > MAX_SELECTOR_LABELS {
        return Err(format!(
            "{what}: {} labels, at most {MAX_SELECTOR_LABELS} allowed",
            labels.len()
        ));
    }
    for (k, v) in labels {
        if k.is_empty() {
            return Err(format!("{what}: a label key must not be empty"));
        }
        if k.contains('*') {
            return Err(format!(
                "{what}.{k}: wildcard not allowed in a label key (selectors match labels exactly)"
            ));
        }
        if v.contains('*') {
            return Err(format!(
                "{what}.{k}: `{v}`: wildcard not allowed in a label value (selectors match labels exactly)"
            ));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return Err(format!(
                "{what}.{k}: {} characters, at most {MAX_LABEL_VALUE_LEN} allowed",
                v.len()
            ));
        }
    }
    Ok(())
}

pub(super) fn peer_authentication(pa: &PeerAuthentication) -> Check {
    if let Some(sel) = &pa.selector {
        labels(&sel.labels, "spec.selector.matchLabels")?;
    }
    if !pa.port_level_mtls.written() {
        return Ok(());
    }
    if pa.selector.as_ref().is_none_or(|s| s.labels.is_empty()) {
        return Err(
            "spec.portLevelMtls requires a workload selector with matchLabels (ports are a workload's, so a namespace-wide policy cannot name them)"
                .into(),
        );
    }
    if pa.port_level_mtls.is_empty() {
        return Err(
            "spec.portLevelMtls: empty; name at least one port, or leave the field out".into(),
        );
    }
    for p in pa.port_level_mtls.keys() {
        port(*p, &format!("spec.portLevelMtls.{p}"))?;
    }
    Ok(())
}

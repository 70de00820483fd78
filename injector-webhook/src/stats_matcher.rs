//! Which of Envoy's own stats a pod's sidecar records, as Istio lets a pod say it: the
//! `proxyStatsMatcher` of `proxy.istio.io/config` and the older `sidecar.istio.io/statsInclusion*`
//! annotations (comma-separated). Without either meshd keeps every Envoy stat; with one, the
//! sidecar records Istio's default set plus what the pod names, as under Istio. The regexps are
//! checked here, so a pod with one Envoy would refuse is refused at admission with the reason,
//! instead of a sidecar that never starts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const INCLUSION_PREFIXES: &str = "sidecar.istio.io/statsInclusionPrefixes";
pub const INCLUSION_SUFFIXES: &str = "sidecar.istio.io/statsInclusionSuffixes";
pub const INCLUSION_REGEXPS: &str = "sidecar.istio.io/statsInclusionRegexps";

/// Environment variable of the `meshd-bootstrap` init container carrying the pod's
/// [`StatsInclusion`] as JSON (`meshd bootstrap --stats-matcher`).
pub const STATS_MATCHER_ENV: &str = "MESHD_STATS_MATCHER";

/// The stat prefixes Istio's sidecars always record when they record a chosen set.
pub const ISTIO_DEFAULT_PREFIXES: [&str; 4] = [
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-grpc",
];

/// Longest pattern accepted, and most patterns per pod: Envoy matches every stat name against
/// each, so an unbounded list is a per-stat cost the pod's author may not see.
const MAX_PATTERN_BYTES: usize = 512;
const MAX_PATTERNS: usize = 64;

/// A pod's chosen stats: each list is OR-ed with the others and with Istio's default prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatsInclusion {
    #[serde(default)]
    pub inclusion_prefixes: Vec<String>,
    #[serde(default)]
    pub inclusion_suffixes: Vec<String>,
    #[serde(default)]
    pub inclusion_regexps: Vec<String>,
}

impl StatsInclusion {
    pub fn is_empty(&self) -> bool {
        self.inclusion_prefixes.is_empty()
            && self.inclusion_suffixes.is_empty()
            && self.inclusion_regexps.is_empty()
    }

    pub(crate) fn merge(&mut self, other: StatsInclusion) {
        for (into, from) in [
            (&mut self.inclusion_prefixes, other.inclusion_prefixes),
            (&mut self.inclusion_suffixes, other.inclusion_suffixes),
            (&mut self.inclusion_regexps, other.inclusion_regexps),
        ] {
            for p in from {
                if !into.contains(&p) {
                    into.push(p);
                }
            }
        }
    }

    /// Every pattern bounded and every regexp one Envoy's RE2 engine compiles (the `regex`
    /// crate's syntax is RE2's: no look-around, no back-references); `at` names the source.
    pub fn check(&self, at: &str) -> Result<(), String> {
        let count = self.inclusion_prefixes.len()
            + self.inclusion_suffixes.len()
            + self.inclusion_regexps.len();
        if count > MAX_PATTERNS {
            return Err(format!(
                "{at}: {count} patterns; at most {MAX_PATTERNS} are accepted"
            ));
        }
        for (field, list) in [
            ("inclusionPrefixes", &self.inclusion_prefixes),
            ("inclusionSuffixes", &self.inclusion_suffixes),
            ("inclusionRegexps", &self.inclusion_regexps),
        ] {
            for (i, p) in list.iter().enumerate() {
                if p.is_empty() || p.len() > MAX_PATTERN_BYTES {
                    return Err(format!(
                        "{at}: {field}[{i}] must be 1 to {MAX_PATTERN_BYTES} bytes"
                    ));
                }
                if field == "inclusionRegexps"
                    && let Err(e) = regex::Regex::new(p)
                {
                    return Err(format!("{at}: {field}[{i}] `{p}` is not a regexp: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// Reads `proxyStatsMatcher` (the value of that ProxyConfig field).
pub fn from_proxy_config(value: serde_yaml::Value, at: &str) -> Result<StatsInclusion, String> {
    let m: StatsInclusion =
        serde_yaml::from_value(value).map_err(|e| format!("{at}: not a ProxyStatsMatcher: {e}"))?;
    m.check(at)?;
    Ok(m)
}

/// The pod's chosen stats: the mesh default (the injector config's `proxyStatsMatcher`), its
/// own `proxyStatsMatcher` and its `statsInclusion*` annotations, merged (as ProxyConfig's
/// lists merge). Problems go to `errors`.
pub fn read(
    annotations: &BTreeMap<String, String>,
    mesh_default: Option<StatsInclusion>,
    from_config: Option<StatsInclusion>,
    errors: &mut Vec<String>,
) -> Option<StatsInclusion> {
    let list = |key: &str| -> Vec<String> {
        annotations
            .get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let from_annotations = [
        StatsInclusion {
            inclusion_prefixes: list(INCLUSION_PREFIXES),
            ..Default::default()
        },
        StatsInclusion {
            inclusion_suffixes: list(INCLUSION_SUFFIXES),
            ..Default::default()
        },
        StatsInclusion {
            inclusion_regexps: list(INCLUSION_REGEXPS),
            ..Default::default()
        },
    ];
    let mut out = mesh_default.unwrap_or_default();
    out.merge(from_config.unwrap_or_default());
    for (key, m) in [INCLUSION_PREFIXES, INCLUSION_SUFFIXES, INCLUSION_REGEXPS]
        .into_iter()
        .zip(from_annotations)
    {
        if let Err(e) = m.check(&format!("annotation {key}")) {
            errors.push(e);
            return None;
        }
        out.merge(m);
    }
    if let Err(e) = out.check("the pod's stats inclusion") {
        errors.push(e);
        return None;
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
#[path = "stats_matcher_tests.rs"]
mod tests;

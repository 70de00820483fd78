//! Where a workload runs, as Istio names it: `region/zone/subzone`, from a WorkloadEntry's
//! `locality` field or from its labels (`istio-locality`, then the Kubernetes topology labels).

use crate::networking::Labels;

pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Istio's own label, `region.zone.subzone` (label values cannot hold `/`).
pub const ISTIO_LOCALITY_LABEL: &str = "istio-locality";

/// Labels longer than this are not localities; bounds what a hostile object can make us keep.
const MAX_LOCALITY_LEN: usize = 253;

/// A workload's locality as `region/zone/subzone` (trailing parts empty when unknown; the empty
/// string when nothing is known): the explicit `locality` when set, else `istio-locality`, else
/// the topology labels.
pub fn locality_of(explicit: Option<&str>, labels: &Labels) -> String {
    let chosen = match explicit.filter(|l| !l.is_empty()) {
        Some(l) => l.to_string(),
        None => match labels.get(ISTIO_LOCALITY_LABEL).filter(|l| !l.is_empty()) {
            Some(l) => l.replace('.', "/"),
            None => {
                let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
                let parts = [get(REGION_LABEL), get(ZONE_LABEL), get(SUBZONE_LABEL)];
                parts.join("/")
            }
        },
    };
    if chosen.len() > MAX_LOCALITY_LEN {
        return String::new();
    }
    let trimmed = chosen.trim_end_matches('/');
    trimmed.to_string()
}

/// A locality split into its three parts.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(s: &str) -> Locality {
        let mut parts = s.splitn(3, '/');
        let mut next = || parts.next().unwrap_or("").to_string();
        Locality {
            region: next(),
            zone: next(),
            subzone: next(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Whether `pattern` (`region[/zone[/subzone]]`, each part a name or `*`; `*` alone matches
    /// everything) names this locality, Istio's rule for `distribute`.
    pub fn matches(&self, pattern: &str) -> bool {
        let parts: Vec<&str> = pattern.split('/').collect();
        let mine = [&self.region, &self.zone, &self.subzone];
        parts
            .iter()
            .zip(mine)
            .all(|(p, m)| *p == "*" || *p == m.as_str())
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let joined = format!("{}/{}/{}", self.region, self.zone, self.subzone);
        f.write_str(joined.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn explicit_field_then_istio_label_then_topology_labels() {
        let topo = labels(&[(REGION_LABEL, "r1"), (ZONE_LABEL, "z1")]);
        assert_eq!(locality_of(None, &topo), "r1/z1");
        assert_eq!(locality_of(Some("r2/z2/s2"), &topo), "r2/z2/s2");
        let istio = labels(&[(ISTIO_LOCALITY_LABEL, "r3.z3"), (REGION_LABEL, "r1")]);
        assert_eq!(locality_of(None, &istio), "r3/z3");
        assert_eq!(locality_of(None, &Labels::new()), "");
        assert_eq!(locality_of(Some(&"x".repeat(300)), &Labels::new()), "");
    }

    #[test]
    fn patterns_match_by_part_with_wildcards() {
        let l = Locality::parse("us-west/zone1/rack2");
        for (pattern, expected) in [
            ("*", true),
            ("us-west/*", true),
            ("us-west/zone1/*", true),
            ("us-west/zone1/rack2", true),
            ("us-west", true),
            ("us-east/*", false),
            ("us-west/zone2/*", false),
        ] {
            assert_eq!(l.matches(pattern), expected, "{pattern}");
        }
        assert_eq!(l.to_string(), "us-west/zone1/rack2");
        assert_eq!(Locality::parse("r1").to_string(), "r1");
    }
}

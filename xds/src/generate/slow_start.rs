//! DestinationRule `loadBalancer.warmup` (and the older `warmupDurationSecs`) as Envoy's slow
//! start: a new endpoint's weight ramps up over the window instead of taking its full share at
//! once. Envoy has it for round robin and least request only, as Istio documents.

use super::common::duration;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
use envoy_types::pb::envoy::r#type::v3::Percent;
use meshd_model::networking::LoadBalancerSettings;

/// Envoy wants a runtime key beside a default; none is ever set, so the default applies.
const AGGRESSION_RUNTIME_KEY: &str = "meshd.slow_start.aggression";

/// Adds the slow-start config `lb` asks for to a cluster whose policy is already chosen.
pub fn apply(c: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    let Some(lb) = lb else { return };
    let Some(window) = lb.warmup_window() else {
        return;
    };
    let warmup = lb.warmup.as_ref();
    let slow_start_config = Some(cluster::SlowStartConfig {
        slow_start_window: Some(duration(window)),
        aggression: warmup.and_then(|w| w.aggression).map(|a| RuntimeDouble {
            default_value: a,
            runtime_key: AGGRESSION_RUNTIME_KEY.into(),
        }),
        min_weight_percent: warmup
            .and_then(|w| w.minimum_percent)
            .map(|value| Percent { value }),
    });
    if c.lb_policy == cluster::LbPolicy::RoundRobin as i32 {
        c.lb_config = Some(cluster::LbConfig::RoundRobinLbConfig(
            cluster::RoundRobinLbConfig { slow_start_config },
        ));
    } else if c.lb_policy == cluster::LbPolicy::LeastRequest as i32 {
        c.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
            cluster::LeastRequestLbConfig {
                slow_start_config,
                ..Default::default()
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::generate::{GenOptions, MeshSnapshot};
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use meshd_model::{MeshConfig, parse_file};
    use prost::Message;
    use std::sync::Arc;

    fn cluster_for(lb: &str) -> (MeshConfig, Option<Cluster>) {
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cart, namespace: shop}}
spec:
  hosts: [cart.shop.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: cart, namespace: shop}}
spec:
  host: cart
  trafficPolicy:
    loadBalancer: {lb}
"#
        );
        let file = parse_file("t.yaml", &yaml).unwrap();
        let config = MeshConfig::assemble([&file]);
        let snap =
            MeshSnapshot::build(1, Arc::new(config.clone()), Arc::new(GenOptions::default()));
        let c = snap
            .clusters
            .iter()
            .find(|(n, _)| n.as_str() == "outbound|8080||cart.shop.svc.cluster.local")
            .map(|(_, r)| Cluster::decode(r.value().as_ref()).unwrap());
        (config, c)
    }

    /// `warmup` on the default policy (least request) and `warmupDurationSecs` on round robin
    /// become Envoy's slow start with the window, aggression and minimum weight given; a
    /// DestinationRule with them is accepted (it was once rejected as unsupported).
    #[test]
    fn warmup_is_envoy_slow_start() {
        let (config, c) =
            cluster_for("{warmup: {duration: 90s, minimumPercent: 20, aggression: 2.5}}");
        assert!(config.rejected.is_empty(), "{:?}", config.rejected);
        let Some(cluster::LbConfig::LeastRequestLbConfig(lr)) = c.unwrap().lb_config else {
            panic!("no least-request config")
        };
        let s = lr.slow_start_config.unwrap();
        assert_eq!(s.slow_start_window.unwrap().seconds, 90);
        assert_eq!(s.aggression.unwrap().default_value, 2.5);
        assert_eq!(s.min_weight_percent.unwrap().value, 20.0);

        let (config, c) = cluster_for("{simple: ROUND_ROBIN, warmupDurationSecs: 30s}");
        assert!(config.rejected.is_empty(), "{:?}", config.rejected);
        let c = c.unwrap();
        assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        let Some(cluster::LbConfig::RoundRobinLbConfig(rr)) = c.lb_config else {
            panic!("no round-robin config")
        };
        let s = rr.slow_start_config.unwrap();
        assert_eq!(s.slow_start_window.unwrap().seconds, 30);
        assert!(s.aggression.is_none() && s.min_weight_percent.is_none());
    }

    /// Envoy has no slow start for random or ring hash: the cluster keeps its own config.
    #[test]
    fn other_policies_get_no_slow_start() {
        let (_, c) = cluster_for("{simple: RANDOM, warmupDurationSecs: 30s}");
        assert!(c.unwrap().lb_config.is_none());
    }
}

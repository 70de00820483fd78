//! DestinationRule load-balancer settings beyond the algorithm: warmup (Envoy's slow start) and
//! locality-aware load balancing, field for field as Istio spells them.

use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

impl super::LoadBalancerSettings {
    /// The slow-start window, `warmup.duration` over the older `warmupDurationSecs`.
    pub fn warmup_window(&self) -> Option<Duration> {
        self.warmup
            .as_ref()
            .and_then(|w| w.duration)
            .or(self.warmup_duration_secs)
    }
}

/// `loadBalancer.warmup`: a new endpoint's share of traffic ramps up over `duration`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    #[serde(default, with = "duration::option")]
    pub duration: Option<Duration>,
    /// The share (0-100) a new endpoint starts at.
    pub minimum_percent: Option<f64>,
    /// The ramp's curve: 1 is linear, more is slower at first.
    pub aggression: Option<f64>,
}

/// `loadBalancer.localityLbSetting`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
    pub enabled: Option<bool>,
}

/// Traffic from locality `from` is split over the localities in `to` by weight (adding up to
/// 100).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// When region `from` has no healthy endpoint, traffic goes to region `to`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
}

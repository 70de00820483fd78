//! DestinationRule `loadBalancer` warmup and locality settings, by Istio's documented rules.

use super::Check;
use crate::networking::LoadBalancerSettings;

pub(super) fn settings(at: &str, lb: &LoadBalancerSettings) -> Check {
    if let Some(w) = &lb.warmup {
        let at = format!("{at}.warmup");
        match w.duration {
            None => return Err(format!("{at}.duration is required")),
            Some(d) if d.is_zero() => return Err(format!("{at}.duration must be more than 0s")),
            Some(_) => {}
        }
        if let Some(p) = w.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            return Err(format!("{at}.minimumPercent: {p} is outside 0-100"));
        }
        if let Some(a) = w.aggression {
            // Istio's schema allows 0; Envoy divides by it and refuses the cluster.
            if !(a.is_finite() && a > 0.0) {
                return Err(format!("{at}.aggression: {a} must be more than 0"));
            }
        }
    }
    if lb.warmup_duration_secs.is_some_and(|d| d.is_zero()) {
        return Err(format!("{at}.warmupDurationSecs must be more than 0s"));
    }
    if let Some(l) = &lb.locality_lb_setting {
        let at = format!("{at}.localityLbSetting");
        let fails_over = !(l.failover.is_empty() && l.failover_priority.is_empty());
        if !l.distribute.is_empty() && fails_over {
            return Err(format!(
                "{at}: set only one of distribute and failover/failoverPriority"
            ));
        }
        for (i, d) in l.distribute.iter().enumerate() {
            let at = format!("{at}.distribute[{i}]");
            if d.from.is_empty() {
                return Err(format!("{at}.from is required"));
            }
            if d.to.is_empty() {
                return Err(format!("{at}.to must name at least one locality"));
            }
            let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if total != 100 {
                return Err(format!("{at}.to: weights add up to {total}, not 100"));
            }
        }
        for (i, f) in l.failover.iter().enumerate() {
            let at = format!("{at}.failover[{i}]");
            if f.from.is_empty() || f.to.is_empty() {
                return Err(format!("{at}: from and to are both required"));
            }
            if f.from == f.to {
                return Err(format!(
                    "{at}: fails over from region `{}` to itself",
                    f.from
                ));
            }
        }
        for (i, p) in l.failover_priority.iter().enumerate() {
            if p.is_empty() {
                return Err(format!("{at}.failoverPriority[{i}] is empty"));
            }
        }
    }
    Ok(())
}

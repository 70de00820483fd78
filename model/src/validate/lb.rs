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
            locality_pattern(&format!("{at}.from"), &d.from)?;
            for (to, weight) in &d.to {
                locality_pattern(&format!("{at}.to"), to)?;
                if *weight == 0 {
                    return Err(format!("{at}.to: the weight of `{to}` must be more than 0"));
                }
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
            for (field, region) in [("from", &f.from), ("to", &f.to)] {
                if region.contains('/') || region.contains('*') {
                    return Err(format!(
                        "{at}.{field}: `{region}` must be a region, without `/` or `*`"
                    ));
                }
            }
            if f.from == f.to {
                return Err(format!(
                    "{at}: fails over from region `{}` to itself",
                    f.from
                ));
            }
        }
        for (i, p) in l.failover_priority.iter().enumerate() {
            let label = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
            if label.is_empty() {
                return Err(format!("{at}.failoverPriority[{i}] names no label"));
            }
        }
    }
    Ok(())
}

/// Istio's locality form: `region[/zone[/subzone]]`, a `*` only as the last part.
fn locality_pattern(at: &str, pattern: &str) -> Check {
    let parts: Vec<&str> = pattern.split('/').collect();
    if parts.len() > 3 {
        return Err(format!(
            "{at}: `{pattern}` has more than region/zone/subzone"
        ));
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() || (part.contains('*') && (!last || *part != "*")) {
            return Err(format!(
                "{at}: `{pattern}` is not a locality (region/zone/subzone, `*` only as the whole last part)"
            ));
        }
    }
    Ok(())
}

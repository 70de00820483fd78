//! Istio's `pilot_k8s_reg_events`: the API server's watch events the Kubernetes index took in,
//! by kind of object and event (`add`, `update`, `delete`), as istiod counts its registry's.
//! The kinds are the watched ones, so the series count is fixed; file mode records none.

use meshd_ads::istio_metrics::BareCounter;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What one watch event did to the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegEvent {
    /// An object the index did not hold (each object of a first list counts as one).
    Add,
    /// A new version of an object it held.
    Update,
    Delete,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegEventLabels {
    /// The object's kind: `Pod`, `Service`, `EndpointSlice`, `VirtualService`…
    r#type: &'static str,
    event: &'static str,
}

fn labels(kind: &'static str, event: RegEvent) -> RegEventLabels {
    let event = match event {
        RegEvent::Add => "add",
        RegEvent::Update => "update",
        RegEvent::Delete => "delete",
    };
    RegEventLabels {
        r#type: kind,
        event,
    }
}

#[derive(Debug, Default)]
pub struct RegEvents {
    events: Family<RegEventLabels, BareCounter>,
}

impl RegEvents {
    pub fn record(&self, kind: &'static str, event: RegEvent, count: u64) {
        if count == 0 {
            return;
        }
        self.events
            .get_or_create(&labels(kind, event))
            .inc_by(count);
    }

    /// The count so far of `event`s on `kind`.
    pub fn get(&self, kind: &'static str, event: RegEvent) -> u64 {
        self.events.get(&labels(kind, event)).map_or(0, |c| c.get())
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pilot_k8s_reg_events",
            "Events from the Kubernetes registry, by object kind and event",
            self.events.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_by_kind_and_event_under_istios_bare_name() {
        let events = RegEvents::default();
        events.record("Pod", RegEvent::Add, 3);
        events.record("Pod", RegEvent::Update, 1);
        events.record("Pod", RegEvent::Update, 1);
        events.record("Service", RegEvent::Delete, 1);
        events.record("Service", RegEvent::Add, 0);
        let mut registry = Registry::default();
        events.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        samples.sort();
        assert_eq!(
            samples,
            [
                r#"pilot_k8s_reg_events{type="Pod",event="add"} 3"#,
                r#"pilot_k8s_reg_events{type="Pod",event="update"} 2"#,
                r#"pilot_k8s_reg_events{type="Service",event="delete"} 1"#,
            ],
            "{text}"
        );
    }
}

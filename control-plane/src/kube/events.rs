//! Kubernetes Events for rejected Istio objects: where `kubectl get events` (and tools built
//! on it) look, the leader writes one Warning `Rejected` Event per object meshd refuses, with
//! the reason naming the field, beside `/debug/configz` and `meshd analyze`.
//!
//! Bounded: one Event per (object, reason) while it stays rejected, at most
//! [`MAX_EVENTS_PER_CHANGE`] per config change (a flood of bad objects is summarised in the
//! log, never a flood of writes), messages cut to Kubernetes' 1 KiB note limit.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use meshd_model::{Kind, MeshConfig, Rejected};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::watch;

/// Events written at most per config change.
pub const MAX_EVENTS_PER_CHANGE: usize = 50;
/// Kubernetes refuses an Event note longer than this.
const MAX_MESSAGE_BYTES: usize = 1024;

/// A rejected Istio object, as an Event names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RejectedObject {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

impl RejectedObject {
    fn of(r: &Rejected) -> Option<RejectedObject> {
        Some(RejectedObject {
            kind: r.kind?,
            namespace: r.namespace.clone()?,
            name: r.name.clone().filter(|n| !n.is_empty())?,
            reason: r.reason.clone(),
        })
    }
}

/// The Istio objects `mesh` rejects now, and those of them not in `reported` (to write).
pub fn to_report(
    mesh: &MeshConfig,
    reported: &BTreeSet<RejectedObject>,
) -> (BTreeSet<RejectedObject>, Vec<RejectedObject>) {
    let now: BTreeSet<RejectedObject> = mesh
        .rejected
        .iter()
        .filter_map(RejectedObject::of)
        .collect();
    let new = now.difference(reported).cloned().collect();
    (now, new)
}

fn cut(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// The Event for `r`, written in its object's namespace.
pub fn event(r: &RejectedObject, now: Timestamp) -> Event {
    let time = Time(now);
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", r.name)),
            namespace: Some(r.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(format!("{}/v1", r.kind.group())),
            kind: Some(r.kind.name().to_string()),
            name: Some(r.name.clone()),
            namespace: Some(r.namespace.clone()),
            ..ObjectReference::default()
        },
        reason: Some("Rejected".into()),
        message: Some(cut(&r.reason)),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("meshd".into()),
            host: None,
        }),
        reporting_component: Some("meshd".into()),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        count: Some(1),
        ..Event::default()
    }
}

/// While this replica leads, writes an Event for each Istio object the config rejects anew.
pub async fn publish_rejections(
    client: Client,
    mut config: watch::Receiver<Arc<MeshConfig>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut reported = BTreeSet::new();
    loop {
        if *leader.borrow_and_update() {
            let mesh = config.borrow_and_update().clone();
            let (now, new) = to_report(&mesh, &reported);
            if new.len() > MAX_EVENTS_PER_CHANGE {
                tracing::warn!(
                    rejected = new.len(),
                    written = MAX_EVENTS_PER_CHANGE,
                    "more newly rejected objects than Events written per change; see /debug/configz"
                );
            }
            for r in new.iter().take(MAX_EVENTS_PER_CHANGE) {
                let api: Api<Event> = Api::namespaced(client.clone(), &r.namespace);
                if let Err(e) = api
                    .create(&PostParams::default(), &event(r, Timestamp::now()))
                    .await
                {
                    tracing::warn!(kind = %r.kind, namespace = %r.namespace, name = %r.name, error = %e, "cannot write the Rejected Event");
                }
            }
            reported = now;
        }
        tokio::select! {
            r = config.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(name: &str, reason: &str) -> Rejected {
        Rejected {
            file: format!("kubernetes:networking.istio.io/VirtualService/shop/{name}"),
            line: 0,
            kind: Some(Kind::VirtualService),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            reason: reason.into(),
        }
    }

    #[test]
    fn each_rejection_is_reported_once_while_it_lasts() {
        let mut mesh = MeshConfig {
            rejected: vec![rejected("a", "bad timeout"), rejected("b", "bad host")],
            ..MeshConfig::default()
        };
        let (now, new) = to_report(&mesh, &BTreeSet::new());
        assert_eq!(new.len(), 2);
        let (now, new) = to_report(&mesh, &now);
        assert!(new.is_empty(), "{new:?}");
        // Fixed, then broken again differently: reported again.
        mesh.rejected = vec![rejected("a", "bad retries")];
        let (_, new) = to_report(&mesh, &now);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].reason, "bad retries");
        // A rejection naming no object (a file's syntax error) has no Event.
        mesh.rejected = vec![Rejected {
            kind: None,
            ..rejected("c", "syntax")
        }];
        assert!(to_report(&mesh, &BTreeSet::new()).1.is_empty());
    }

    #[test]
    fn the_event_names_the_object_and_fits_the_api() {
        let r = RejectedObject::of(&rejected("web", &"é".repeat(2000))).unwrap();
        let e = event(&r, Timestamp::now());
        assert_eq!(e.involved_object.kind.as_deref(), Some("VirtualService"));
        assert_eq!(
            e.involved_object.api_version.as_deref(),
            Some("networking.istio.io/v1")
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        let message = e.message.unwrap();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with("..."));
    }
}

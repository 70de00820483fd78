//! Per-proxy sync state: what was sent, what was ACKed or NACKed. Read by the admin API.

use dashmap::DashMap;
use meshd_xds::resource::{ResourceSet, SharedResource, Subscription, select};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    /// The last response was ACKed.
    Synced,
    /// A response is out and not yet answered.
    Stale,
    /// The last response was rejected; Envoy keeps its previous config.
    Nacked,
}

#[derive(Clone, Debug, Serialize)]
pub struct TypeStatus {
    pub sent_version: String,
    pub acked_version: String,
    pub nonce: String,
    pub status: SyncStatus,
    pub error: Option<String>,
    /// What the proxy was last sent of this type (pointers into shared sets).
    #[serde(skip)]
    pub sent: SentResources,
}

impl Default for TypeStatus {
    fn default() -> Self {
        TypeStatus {
            sent_version: String::new(),
            acked_version: String::new(),
            nonce: String::new(),
            status: SyncStatus::Stale,
            error: None,
            sent: SentResources::default(),
        }
    }
}

/// A sent set and the subscription that selected from it; costs a few pointers per proxy.
#[derive(Clone, Debug)]
pub struct SentResources {
    pub set: ResourceSet,
    pub subscription: Subscription,
}

impl Default for SentResources {
    fn default() -> Self {
        SentResources {
            set: ResourceSet::default(),
            subscription: Subscription::All,
        }
    }
}

impl SentResources {
    pub fn iter(&self) -> impl Iterator<Item = &SharedResource> {
        select(&self.set, &self.subscription)
    }

    pub fn get(&self, name: &str) -> Option<&SharedResource> {
        self.set
            .get(name)
            .filter(|_| self.subscription.selects(name))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub proxy_id: String,
    pub identity: String,
    /// The identity the stream's credential proved (its certificate's key).
    #[serde(skip)]
    pub proven: meshd_xds::proxy::Identity,
    #[serde(with = "rfc3339")]
    pub connected_at: SystemTime,
    pub protocol: &'static str,
    pub types: TypeStatuses,
}

/// A proxy's status per type it asked for (written as a JSON map by type URL).
pub type TypeStatuses = ByType<TypeStatus>;

/// Per-type state of one stream, by the served types' statics in URL order: a few entries in a
/// vector sized to them. Every connected proxy has two (its stream's state and its sync
/// status); as `BTreeMap<String, _>` or `HashMap<String, _>` each cost a node or table of
/// ≈ 1–1.8 KB and a copy of each type URL.
#[derive(Clone, Debug)]
pub struct ByType<T>(Vec<(&'static str, T)>);

impl<T> Default for ByType<T> {
    fn default() -> Self {
        ByType(Vec::new())
    }
}

impl<T> ByType<T> {
    fn find(&self, type_url: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(t, _)| (*t).cmp(type_url))
    }

    pub fn get(&self, type_url: &str) -> Option<&T> {
        self.find(type_url).ok().map(|at| &self.0[at].1)
    }

    pub fn get_mut(&mut self, type_url: &str) -> Option<&mut T> {
        self.find(type_url).ok().map(|at| &mut self.0[at].1)
    }

    pub fn contains_key(&self, type_url: &str) -> bool {
        self.find(type_url).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        self.0.iter().map(|(t, s)| (*t, s))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, s)| s)
    }
}

impl<T: Default> ByType<T> {
    /// The entry of a served type, made when first needed.
    pub fn entry(&mut self, type_url: &'static str) -> &mut T {
        let at = match self.find(type_url) {
            Ok(at) => at,
            Err(at) => {
                // Exactly as many as asked for: a stream asks for a type once, for at most
                // the served ones, and a sidecar uses five of the seven.
                self.0.reserve_exact(1);
                self.0.insert(at, (type_url, T::default()));
                at
            }
        };
        &mut self.0[at].1
    }
}

impl<T: Serialize> Serialize for ByType<T> {
    fn serialize<Ser: serde::Serializer>(&self, ser: Ser) -> Result<Ser::Ok, Ser::Error> {
        ser.collect_map(self.iter())
    }
}

mod rfc3339 {
    use serde::Serializer;
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, ser: S) -> Result<S::Ok, S::Error> {
        let dt = time::OffsetDateTime::from(*t);
        let text = dt
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        ser.serialize_str(&text)
    }
}

pub type ProxyHandle = Arc<Mutex<ProxyStatus>>;

/// Every connected proxy's status, keyed by proxy id.
#[derive(Default, Debug)]
pub struct Registry {
    proxies: DashMap<String, ProxyHandle>,
}

impl Registry {
    pub fn connect(&self, status: ProxyStatus) -> ProxyHandle {
        let handle = Arc::new(Mutex::new(status));
        let id = handle.lock().expect("status").proxy_id.clone();
        self.proxies.insert(id, handle.clone());
        handle
    }

    /// Removes the proxy unless a newer stream of the same proxy already replaced it.
    pub fn disconnect(&self, handle: &ProxyHandle) {
        let id = handle.lock().expect("status").proxy_id.clone();
        self.proxies
            .remove_if(&id, |_, current| Arc::ptr_eq(current, handle));
    }

    pub fn snapshot(&self) -> Vec<ProxyStatus> {
        let mut all: Vec<ProxyStatus> = self
            .proxies
            .iter()
            .map(|e| e.value().lock().expect("status").clone())
            .collect();
        all.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        all
    }

    /// A proxy by full id, or by the `NAME.NAMESPACE` part of it.
    pub fn get(&self, id: &str) -> Option<ProxyStatus> {
        if let Some(p) = self.proxies.get(id) {
            return Some(p.lock().expect("status").clone());
        }
        self.proxies
            .iter()
            .find(|e| e.key().split('~').nth(2) == Some(id))
            .map(|e| e.value().lock().expect("status").clone())
    }

    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_xds::resource::{CLUSTER, ENDPOINT, LISTENER, SECRET};

    /// The sync status reads as the `BTreeMap` it replaced: a JSON map in URL order, one entry
    /// per type however often it is touched, and room for the types asked for only.
    #[test]
    fn per_type_state_is_a_map_in_url_order() {
        let mut types = TypeStatuses::default();
        for url in [SECRET, LISTENER, CLUSTER, ENDPOINT, CLUSTER] {
            types.entry(url).nonce.push('x');
        }
        let json = serde_json::to_value(&types).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = vec![CLUSTER, ENDPOINT, LISTENER, SECRET];
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        assert_eq!(types.get(CLUSTER).unwrap().nonce, "xx");
        assert!(types.contains_key(SECRET) && !types.contains_key("type.googleapis.com/x"));
        assert_eq!(types.0.capacity(), 4, "room for the types asked for only");
    }
}

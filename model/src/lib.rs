//! The mesh model: Istio's API objects as typed Rust values, each with the file and line it came
//! from, validated on their own and against each other. Pure: no I/O, no kube, no tonic.

pub mod credential;
pub mod duration;
pub mod envoyfilter;
pub mod extension_provider;
pub mod jwt;
pub mod locality;
pub mod mesh;
pub mod name_map;
pub mod networking;
pub mod parse;
pub mod path_template;
pub mod registry;
#[cfg(feature = "schema")]
pub mod schema;
pub mod security;
pub mod telemetry;
pub mod telemetry_scope;
pub mod telemetry_tag;
mod validate;
pub mod voicecore;

pub use mesh::{MeshConfig, Rejected};
pub use parse::{
    DocumentCache, FileConfig, cluster_object, document_json, parse_file, parse_file_cached,
};

use serde::{Deserialize, Serialize};

use std::fmt;

/// Where an object came from, for `file:line` messages. Line 0: not from a file (an object
/// from the API server), shown without a line.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SourcePos {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.file),
            line => write!(f, "{}:{line}", self.file),
        }
    }
}

/// A problem with one document, located in its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
    /// The object the document describes, once its kind and name were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectKey>,
    /// A rejected DestinationRule's `host`, read even when the rest of it does not read: a
    /// route to its subsets then says the rule was rejected, and why. (Boxed: errors travel in
    /// `Result`s and stay small.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Box<String>>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = SourcePos {
            file: self.file.clone(),
            line: self.line,
        };
        write!(f, "{at}: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: crate::networking::Labels,
    #[serde(default)]
    pub annotations: crate::name_map::NameMap<String>,
}

impl ObjectMeta {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    DestinationRule,
    VirtualService,
    Gateway,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    EnvoyFilter,
    RequestAuthentication,
    Telemetry,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::Gateway,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::EnvoyFilter,
        Kind::RequestAuthentication,
        Kind::Telemetry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Telemetry => "Telemetry",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::Telemetry => "telemetry.istio.io",
            _ => "networking.istio.io",
        }
    }

    /// API versions accepted for this kind: Istio's v1 and the older versions users still have.
    pub fn accepts_api_version(self, api_version: &str) -> bool {
        let Some((group, version)) = api_version.split_once('/') else {
            return false;
        };
        if group != self.group() {
            return false;
        }
        match self.group() {
            "security.istio.io" => matches!(version, "v1" | "v1beta1"),
            "telemetry.istio.io" => matches!(version, "v1" | "v1alpha1"),
            _ => matches!(version, "v1" | "v1beta1" | "v1alpha3"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
/// Each variant is boxed: an object then takes its own kind's size, not the largest kind's
/// (≈ 1 KB for every WorkloadEntry before; 8 MB of the idle heap at 10 000 of them).
pub enum Spec {
    ServiceEntry(Box<networking::ServiceEntry>),
    WorkloadEntry(Box<networking::WorkloadEntry>),
    DestinationRule(Box<networking::DestinationRule>),
    VirtualService(Box<networking::VirtualService>),
    Gateway(Box<networking::Gateway>),
    Sidecar(Box<networking::Sidecar>),
    PeerAuthentication(Box<security::PeerAuthentication>),
    AuthorizationPolicy(Box<security::AuthorizationPolicy>),
    EnvoyFilter(Box<envoyfilter::EnvoyFilter>),
    RequestAuthentication(Box<security::RequestAuthentication>),
    Telemetry(Box<telemetry::Telemetry>),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::EnvoyFilter(_) => Kind::EnvoyFilter,
            Spec::RequestAuthentication(_) => Kind::RequestAuthentication,
            Spec::Telemetry(_) => Kind::Telemetry,
        }
    }
}

/// The spec types a [`Spec`] holds, each found in it by kind.
pub trait SpecOf: Sized {
    /// The kind whose objects carry this spec.
    const KIND: Kind;
    fn of(spec: &Spec) -> Option<&Self>;
}

macro_rules! spec_of {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl SpecOf for $ty {
            const KIND: Kind = Kind::$variant;
            fn of(spec: &Spec) -> Option<&Self> {
                match spec {
                    Spec::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    )*};
}

spec_of! {
    ServiceEntry => networking::ServiceEntry,
    WorkloadEntry => networking::WorkloadEntry,
    DestinationRule => networking::DestinationRule,
    VirtualService => networking::VirtualService,
    Gateway => networking::Gateway,
    Sidecar => networking::Sidecar,
    PeerAuthentication => security::PeerAuthentication,
    AuthorizationPolicy => security::AuthorizationPolicy,
    EnvoyFilter => envoyfilter::EnvoyFilter,
    RequestAuthentication => security::RequestAuthentication,
    Telemetry => telemetry::Telemetry,
}

/// An accepted object's spec, held by reference to the shared object: indexes over the config
/// keep these rather than copies.
pub struct SpecRef<T> {
    object: std::sync::Arc<ConfigObject>,
    _spec: std::marker::PhantomData<fn() -> T>,
}

impl<T: SpecOf> SpecRef<T> {
    /// `None` when the object holds another kind.
    pub fn new(object: &std::sync::Arc<ConfigObject>) -> Option<SpecRef<T>> {
        T::of(&object.spec)?;
        Some(SpecRef {
            object: object.clone(),
            _spec: std::marker::PhantomData,
        })
    }

    pub fn object(&self) -> &ConfigObject {
        &self.object
    }
}

impl<T: SpecOf> std::ops::Deref for SpecRef<T> {
    type Target = T;
    fn deref(&self) -> &T {
        T::of(&self.object.spec).expect("the kind was checked in SpecRef::new")
    }
}

impl<T> Clone for SpecRef<T> {
    fn clone(&self) -> Self {
        SpecRef {
            object: self.object.clone(),
            _spec: std::marker::PhantomData,
        }
    }
}

impl<T: SpecOf + fmt::Debug> fmt::Debug for SpecRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// One accepted Istio object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigObject {
    pub api_version: String,
    pub meta: ObjectMeta,
    pub source: SourcePos,
    pub spec: Spec,
}

impl ConfigObject {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind(),
            namespace: self.meta.namespace().to_string(),
            name: self.meta.name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[cfg(test)]
mod spec_size {
    /// A variant held inline would make every object as large as the largest kind.
    #[test]
    fn spec_is_a_tag_and_a_pointer() {
        assert!(std::mem::size_of::<super::Spec>() <= 16);
    }
}

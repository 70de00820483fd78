//! What differs between file mode and Kubernetes mode, as the small interfaces the servers are
//! written against: who an admin API caller is ([`CallerCheck`]), a namespace's labels for
//! injection ([`NamespaceLookup`]). Kubernetes mode implements them over the API server
//! (`crate::kube`); file mode has no API server and passes none. Living below both the servers
//! and `kube`, they keep imports running one way: `kube` implements, the servers consume.

use meshd_injector::Labels;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The API group, resource and verb a SubjectAccessReview is asked about.
pub const SAR_GROUP: &str = "meshd.io";
pub const SAR_RESOURCE: &str = "debug";

/// What checking the request's credential found (only asked when the peer is not trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// No `Authorization` header.
    NoCredential,
    /// A credential this server cannot check (not `Bearer`, or no API server: file mode).
    Unusable(String),
    /// TokenReview did not authenticate the token.
    Unauthenticated(String),
    /// Authenticated as `user`, but the SubjectAccessReview said no.
    Forbidden { user: String, reason: String },
    /// Authenticated as `user` and allowed.
    Allowed { user: String },
    /// The API server could not be asked (down, overloaded, too many checks in flight).
    Unavailable(String),
}

/// Checks a bearer token for one admin request (Kubernetes mode: TokenReview, then
/// SubjectAccessReview of `verb` on `debug.meshd.io` named `name`).
pub trait CallerCheck: Send + Sync + 'static {
    fn check<'a>(
        &'a self,
        token: &'a str,
        verb: &'static str,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'a>>;
}

/// Labels of a namespace, when known (Kubernetes mode's namespace watch); `None` when not.
pub type NamespaceLookup = Arc<dyn Fn(&str) -> Option<Labels> + Send + Sync>;

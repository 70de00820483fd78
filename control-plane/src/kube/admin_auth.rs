//! Kubernetes mode: who an off-host admin API caller is (TokenReview of its bearer token, with
//! the API server's default audiences — the token `kubectl` uses) and whether it may do what it
//! asks (SubjectAccessReview).
//!
//! The review asks about verb `get` (reads) or `create` (actions such as starting a root
//! rotation) on resource `debug` of API group `meshd.io`, in meshd's own namespace, named after
//! the endpoint (`syncz`, `ca/rotate-root`, …). No such API is served: the group exists only for
//! RBAC, so granting it gives nothing on the API server itself (unlike a `nonResourceURLs:
//! /debug/*` rule, which would also open the API server's own `/debug/pprof`). The chart's
//! `<release>-admin` ClusterRole grants `get` and `create`, `<release>-debug-viewer` only `get`;
//! bind either with a RoleBinding in meshd's namespace or a ClusterRoleBinding.
//!
//! Every unknown token would cost two API calls, so checks run at most [`MAX_IN_FLIGHT`] at once
//! (more are answered 503 at once) and their answers — yes and no — are kept [`CACHE_TTL`].
//! RBAC: meshd's service account needs `create` on `tokenreviews.authentication.k8s.io` and
//! `subjectaccessreviews.authorization.k8s.io`.

use crate::mode::{AuthOutcome, CallerCheck, SAR_GROUP, SAR_RESOURCE};
use ::kube::Client;
use ::kube::api::{Api, PostParams};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Credential checks (TokenReview + SubjectAccessReview) running at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// How long an answer is reused for the same token, verb and endpoint.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Answers kept at most; past it, expired ones go, then all.
const CACHE_MAX: usize = 1024;

/// TokenReview + SubjectAccessReview of admin API callers.
pub struct AdminAuth {
    client: Client,
    namespace: String,
    in_flight: Semaphore,
    cache: Mutex<HashMap<[u8; 32], (AuthOutcome, Instant)>>,
}

impl AdminAuth {
    /// Checks against `client`'s API server; reviews ask about meshd's `namespace`.
    pub fn new(client: Client, namespace: &str) -> AdminAuth {
        AdminAuth {
            client,
            namespace: namespace.to_string(),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<AuthOutcome> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(o, _)| o.clone())
    }

    fn remember(&self, key: [u8; 32], outcome: &AuthOutcome) {
        if matches!(outcome, AuthOutcome::Unavailable(_)) {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (outcome.clone(), now + CACHE_TTL));
    }

    /// Who `token` belongs to, and whether it may `verb` the endpoint `name`.
    pub async fn authorize(&self, token: &str, verb: &'static str, name: &str) -> AuthOutcome {
        let key: [u8; 32] = Sha256::new()
            .chain_update(token.as_bytes())
            .chain_update([0])
            .chain_update(verb.as_bytes())
            .chain_update([0])
            .chain_update(name.as_bytes())
            .finalize()
            .into();
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return AuthOutcome::Unavailable(format!(
                "{MAX_IN_FLIGHT} admin credential checks already in flight"
            ));
        };
        let outcome = self.review(token, verb, name).await;
        self.remember(key, &outcome);
        outcome
    }

    async fn review(&self, token: &str, verb: &'static str, name: &str) -> AuthOutcome {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = match Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(a) => a,
            Err(e) => return AuthOutcome::Unavailable(format!("TokenReview failed: {e}")),
        };
        let user = match user_from_review(&answer) {
            Ok(u) => u,
            Err(why) => return AuthOutcome::Unauthenticated(why),
        };
        let sar = access_review(&user, &self.namespace, verb, name);
        match Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await
        {
            Ok(answer) => outcome_of_access_review(&user, answer.status.as_ref()),
            Err(e) => AuthOutcome::Unavailable(format!("SubjectAccessReview failed: {e}")),
        }
    }
}

impl CallerCheck for AdminAuth {
    fn check<'a>(
        &'a self,
        token: &'a str,
        verb: &'static str,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'a>> {
        Box::pin(self.authorize(token, verb, name))
    }
}

/// The user a TokenReview answer authenticates, or why it does not.
pub fn user_from_review(review: &TokenReview) -> Result<UserInfo, String> {
    let status = review
        .status
        .as_ref()
        .ok_or("TokenReview returned no status")?;
    if status.authenticated != Some(true) {
        return Err(status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("not authenticated")
            .to_string());
    }
    let user = status.user.clone().ok_or("TokenReview returned no user")?;
    if user.username.as_deref().unwrap_or_default().is_empty() {
        return Err("TokenReview returned no user name".into());
    }
    Ok(user)
}

/// The SubjectAccessReview for `user` doing `verb` on `debug.meshd.io/<name>` in `namespace`.
pub fn access_review(
    user: &UserInfo,
    namespace: &str,
    verb: &str,
    name: &str,
) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                verb: Some(verb.to_string()),
                group: Some(SAR_GROUP.to_string()),
                resource: Some(SAR_RESOURCE.to_string()),
                name: Some(name.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Allowed only on an explicit `allowed: true` that is not also `denied`.
pub fn outcome_of_access_review(
    user: &UserInfo,
    status: Option<&SubjectAccessReviewStatus>,
) -> AuthOutcome {
    let user = user.username.clone().unwrap_or_default();
    match status {
        Some(s) if s.allowed && s.denied != Some(true) => AuthOutcome::Allowed { user },
        Some(s) => AuthOutcome::Forbidden {
            user,
            reason: [s.reason.as_deref(), s.evaluation_error.as_deref()]
                .into_iter()
                .flatten()
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        },
        None => AuthOutcome::Forbidden {
            user,
            reason: "SubjectAccessReview returned no status".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;

    fn alice() -> UserInfo {
        UserInfo {
            username: Some("alice".into()),
            groups: Some(vec!["ops".into()]),
            uid: Some("u-1".into()),
            extra: Some([("scopes".to_string(), vec!["x".to_string()])].into()),
        }
    }

    #[test]
    fn the_review_names_the_user_verb_and_endpoint() {
        let sar = access_review(&alice(), "meshd-system", "create", "ca/rotate-root");
        let spec = &sar.spec;
        assert_eq!(spec.user.as_deref(), Some("alice"));
        assert_eq!(spec.groups, Some(vec!["ops".to_string()]));
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert!(spec.extra.as_ref().unwrap().contains_key("scopes"));
        let ra = spec.resource_attributes.as_ref().unwrap();
        assert_eq!(ra.namespace.as_deref(), Some("meshd-system"));
        assert_eq!(ra.verb.as_deref(), Some("create"));
        assert_eq!(ra.group.as_deref(), Some("meshd.io"));
        assert_eq!(ra.resource.as_deref(), Some("debug"));
        assert_eq!(ra.name.as_deref(), Some("ca/rotate-root"));
        assert!(spec.non_resource_attributes.is_none());
    }

    #[test]
    fn only_an_explicit_allow_allows() {
        let status = |allowed, denied, reason: &str| SubjectAccessReviewStatus {
            allowed,
            denied,
            reason: Some(reason.into()),
            evaluation_error: None,
        };
        assert_eq!(
            outcome_of_access_review(&alice(), Some(&status(true, None, ""))),
            AuthOutcome::Allowed {
                user: "alice".into()
            }
        );
        for s in [status(false, None, "no rule"), status(true, Some(true), "")] {
            assert!(
                matches!(
                    outcome_of_access_review(&alice(), Some(&s)),
                    AuthOutcome::Forbidden { .. }
                ),
                "{s:?}"
            );
        }
        assert!(matches!(
            outcome_of_access_review(&alice(), None),
            AuthOutcome::Forbidden { .. }
        ));
    }

    #[test]
    fn unauthenticated_tokens_say_why() {
        let review = |authenticated, user: Option<UserInfo>, error: Option<&str>| TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                user,
                error: error.map(String::from),
                audiences: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            user_from_review(&review(true, Some(alice()), None))
                .unwrap()
                .username
                .as_deref(),
            Some("alice")
        );
        let e = user_from_review(&review(false, None, Some("token has expired"))).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        assert!(user_from_review(&review(true, None, None)).is_err());
        assert!(user_from_review(&review(true, Some(UserInfo::default()), None)).is_err());
        assert!(user_from_review(&TokenReview::default()).is_err());
    }
}

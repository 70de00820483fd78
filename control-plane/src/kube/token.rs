//! Proxy identity in Kubernetes mode: the pod's projected service-account token, checked with
//! the API server's TokenReview.
//!
//! # The token a sidecar presents
//!
//! The injected pod mounts a projected service-account token with audience `istio-ca` (meshd's
//! `--token-audience`) at [`TOKEN_PATH`] (`/var/run/secrets/tokens/istio-token`, Istio's path).
//! The kubelet rewrites that file before the token expires (at 80% of its lifetime, default
//! one hour), so the file always holds a valid token while the pod runs. Envoy sends the file's
//! content as `authorization: Bearer <token>` metadata when it opens an xDS stream; it must
//! re-read the file on each new stream (not bake the first token into its bootstrap), so that
//! a proxy reconnecting after its first token expired presents the rotated one.
//!
//! # What meshd checks
//!
//! A TokenReview with `audiences: [<token-audience>]`: the token must be authenticated, for
//! that audience, for a service account (`system:serviceaccount:<ns>:<sa>`), and bound to a
//! pod (`authentication.kubernetes.io/pod-name` in the user's extra, which the API server sets
//! for pod-bound projected tokens only; it also checks the pod still exists). The identity is
//! `{namespace, service_account, workload: pod name}` → `spiffe://<td>/ns/<ns>/sa/<sa>`; the xDS
//! server then binds the stream to that pod as the registry (the pod watch) knows it: the node
//! id must name the pod, carry the pod's IP, claim router mode only for a gateway pod (label
//! `istio: …gateway`), and the pod must run as the token's service account
//! (`meshd_xds::proxy::bind`). A pod the watch has not shown yet gets a few seconds to appear.
//!
//! An established stream stays up when its token expires (Istio's behaviour too): identity is
//! proven when a stream opens, and every reconnect is a new review. Reviews are cached briefly
//! ([`TokenReviewAuth::cache_ttl`], never past the token's own `exp`) so a reconnect storm does
//! not become a TokenReview storm. What an unknown token costs is bounded too: at most
//! [`ReviewLimits::concurrency`] reviews are in flight (more wait their turn), and a token the
//! API server refused is refused again without a review for [`ReviewLimits::negative_ttl`].
//! meshd's own bearer credentials (`meshd1.…`, `meshd
//! bootstrap`) keep working beside tokens when a CA is given.
//!
//! RBAC: meshd's service account needs `create` on `tokenreviews.authentication.k8s.io`
//! (the built-in `system:auth-delegator` ClusterRole grants it).

use crate::identity::{CredentialAuth, identity_of};
use ::kube::Client;
use ::kube::api::{Api, PostParams};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use meshd_ads::Authenticator;
use meshd_ca::CertificateAuthority;
use meshd_xds::Identity;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::metadata::MetadataMap;

/// Where the injected pod's projected token (audience `--token-audience`) is mounted; Envoy
/// reads it for each new xDS stream.
pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// The default audience meshd asks TokenReview to check (Istio's).
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The TokenReview extra key naming the pod a bound token belongs to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const SA_PREFIX: &str = "system:serviceaccount:";
/// meshd's own credentials (`CertificateAuthority::issue_credential`) start with this.
const MESHD_CREDENTIAL_PREFIX: &str = "meshd1.";

struct Cached {
    identity: Identity,
    /// Until when the review is reused without asking again.
    until: Instant,
    /// The token's own `exp`: while the API server cannot be reached (connection error, 5xx),
    /// a token it accepted before keeps authenticating until then, never past it.
    expires: Option<SystemTime>,
}

/// Whether a failed TokenReview call means "the API server could not answer" (connection
/// error, timeout, 5xx) rather than a definite answer about the token or the request.
fn is_outage(e: &::kube::Error) -> bool {
    match e {
        ::kube::Error::Api(s) => s.code >= 500,
        ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Tokens remembered at most, each way: past it, expired entries are dropped, and if none has
/// expired a new one is not remembered (a flood of distinct tokens is bounded by the semaphore).
const MAX_CACHED: usize = 4096;

/// What reviewing unknown tokens may cost.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewLimits {
    /// TokenReviews in flight at once.
    pub concurrency: usize,
    /// How long a refused token is refused without asking again.
    pub negative_ttl: Duration,
}

impl Default for ReviewLimits {
    fn default() -> Self {
        ReviewLimits {
            concurrency: 16,
            negative_ttl: Duration::from_secs(10),
        }
    }
}

struct Refused {
    reason: String,
    until: Instant,
}

/// Authenticates xDS streams by TokenReview of their bearer token.
pub struct TokenReviewAuth {
    client: Client,
    audience: String,
    trust_domain: String,
    /// How long a successful review is reused (never past the token's `exp`).
    pub cache_ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// Tokens the API server refused lately (the negative cache).
    refused: Mutex<HashMap<[u8; 32], Refused>>,
    negative_ttl: Duration,
    reviews: tokio::sync::Semaphore,
    /// Reviews waiting for a turn (tests watch it).
    waiting: std::sync::atomic::AtomicUsize,
    credentials: Option<CredentialAuth>,
}

impl TokenReviewAuth {
    pub fn new(client: Client, audience: &str, trust_domain: &str) -> TokenReviewAuth {
        TokenReviewAuth {
            client,
            audience: audience.to_string(),
            trust_domain: trust_domain.to_string(),
            cache_ttl: Duration::from_secs(30),
            cache: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            negative_ttl: ReviewLimits::default().negative_ttl,
            reviews: tokio::sync::Semaphore::new(ReviewLimits::default().concurrency),
            waiting: Default::default(),
            credentials: None,
        }
    }

    pub fn with_limits(mut self, limits: &ReviewLimits) -> TokenReviewAuth {
        self.negative_ttl = limits.negative_ttl;
        self.reviews = tokio::sync::Semaphore::new(limits.concurrency.max(1));
        self
    }

    /// Reviews waiting for one of the concurrency limit's turns.
    pub fn reviews_waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Why the API server refused this token lately, if it did.
    fn refused_lately(&self, key: &[u8; 32], now: Instant) -> Option<String> {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match refused.get(key) {
            Some(r) if r.until > now => Some(r.reason.clone()),
            Some(_) => {
                refused.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember_refusal(&self, key: [u8; 32], reason: &str) {
        let now = Instant::now();
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= MAX_CACHED {
            refused.retain(|_, r| r.until > now);
            if refused.len() >= MAX_CACHED {
                return;
            }
        }
        refused.insert(
            key,
            Refused {
                reason: reason.to_string(),
                until: now + self.negative_ttl,
            },
        );
    }

    /// Also accept meshd's own bearer credentials (gateways and VMs bootstrapped by `meshd
    /// bootstrap`).
    pub fn with_credentials(mut self, ca: Arc<CertificateAuthority>) -> TokenReviewAuth {
        self.credentials = Some(CredentialAuth { ca });
        self
    }

    /// The identity the API server vouched for when it last reviewed this token, if the
    /// token has not expired since (the outage fallback: only the `exp` of a token TokenReview
    /// accepted is read, nothing else in it is trusted).
    fn reviewed_before(&self, key: &[u8; 32]) -> Option<Identity> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(key)?;
        let identity = c.identity.clone();
        c.expires
            .is_some_and(|exp| exp > SystemTime::now())
            .then(|| {
                tracing::warn!(
                    proxy = %identity.workload,
                    "API server unreachable: accepting a token it reviewed before, until its expiry"
                );
                identity
            })
    }

    /// Reviews `token` (or answers from the cache).
    pub async fn review(&self, token: &str) -> Result<Identity, String> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        {
            let mut cache = self.cache.lock().expect("token cache");
            if let Some(c) = cache.get(&key) {
                if c.until > now {
                    return Ok(c.identity.clone());
                }
                // Kept (for an outage) until the token itself expires.
                if c.expires.is_none_or(|exp| exp <= SystemTime::now()) {
                    cache.remove(&key);
                }
            }
        }
        if let Some(reason) = self.refused_lately(&key, now) {
            return Err(reason);
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let permit = self.reviews.acquire().await;
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let _permit = permit.map_err(|_| "TokenReview is shutting down".to_string())?;
        // Others waiting with the same token: the first answer is theirs too.
        if let Some(reason) = self.refused_lately(&key, Instant::now()) {
            return Err(reason);
        }
        if let Some(c) = self
            .cache
            .lock()
            .expect("token cache")
            .get(&key)
            .filter(|c| c.until > Instant::now())
        {
            return Ok(c.identity.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = match api.create(&PostParams::default(), &review).await {
            Ok(answer) => answer,
            Err(e) if is_outage(&e) => {
                return self.reviewed_before(&key).ok_or_else(|| {
                    format!("TokenReview failed (API server unreachable, token not reviewed before): {e}")
                });
            }
            Err(e) => return Err(format!("TokenReview failed: {e}")),
        };
        let identity = identity_from_review(&answer, &self.audience, &self.trust_domain)
            .inspect_err(|reason| self.remember_refusal(key, reason))?;
        let mut until = now + self.cache_ttl;
        let expires = token_expiry(token);
        if let Some(left) = expires.map(|exp| {
            exp.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        }) {
            until = until.min(now + left);
        }
        let mut cache = self.cache.lock().expect("token cache");
        // Keep the cache small: drop what has expired whenever it grows.
        if cache.len() > MAX_CACHED {
            let wall = SystemTime::now();
            cache.retain(|_, c| c.until > now || c.expires.is_some_and(|exp| exp > wall));
        }
        if cache.len() <= MAX_CACHED {
            cache.insert(
                key,
                Cached {
                    identity: identity.clone(),
                    until,
                    expires,
                },
            );
        }
        Ok(identity)
    }
}

/// The identity a TokenReview answer vouches for, or why it does not.
pub fn identity_from_review(
    review: &TokenReview,
    audience: &str,
    trust_domain: &str,
) -> Result<Identity, String> {
    let status = review
        .status
        .as_ref()
        .ok_or("TokenReview returned no status")?;
    if status.authenticated != Some(true) {
        return Err(format!(
            "token rejected by the API server: {}",
            status
                .error
                .as_deref()
                .filter(|e| !e.is_empty())
                .unwrap_or("not authenticated")
        ));
    }
    if let Some(auds) = &status.audiences
        && !auds.iter().any(|a| a == audience)
    {
        return Err(format!("token is for audiences {auds:?}, not `{audience}`"));
    }
    let user = status.user.as_ref().ok_or("TokenReview returned no user")?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| format!("`{username}` is not a service account"))?;
    let pod = user
        .extra
        .as_ref()
        .and_then(|e| e.get(POD_NAME_EXTRA))
        .and_then(|v| v.first())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            format!(
                "the token of {username} is not bound to a pod (use the pod's projected token, audience `{audience}`)"
            )
        })?;
    Ok(Identity {
        workload: pod.clone(),
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        trust_domain: trust_domain.to_string(),
    })
}

/// The `exp` claim of a JWT, unverified (only used to bound the cache; the API server verifies).
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

fn bearer(metadata: &MetadataMap) -> Result<&str, String> {
    let header = metadata
        .get("authorization")
        .ok_or("no credential: the stream carries no `authorization` metadata")?
        .to_str()
        .map_err(|_| "the `authorization` metadata is not text")?;
    header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "the `authorization` metadata is not `Bearer <token>`".to_string())
}

impl Authenticator for TokenReviewAuth {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, String> {
        let token = bearer(metadata)?;
        if token.starts_with(MESHD_CREDENTIAL_PREFIX)
            && let Some(creds) = &self.credentials
        {
            let claims = creds
                .ca
                .verify_credential(token)
                .map_err(|e| format!("credential rejected: {e}"))?;
            return Ok(identity_of(&claims, creds.ca.trust_domain()));
        }
        self.review(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn answer(authenticated: bool, username: &str, pod: Option<&str>) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec!["istio-ca".into()]),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra: pod.map(|p| [(POD_NAME_EXTRA.to_string(), vec![p.to_string()])].into()),
                    ..Default::default()
                }),
                error: (!authenticated).then(|| "token has expired".to_string()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn service_account_token_bound_to_a_pod() {
        let id = identity_from_review(
            &answer(
                true,
                "system:serviceaccount:voicecore-ai:billing",
                Some("billing-v1-abc"),
            ),
            "istio-ca",
            "cluster.local",
        )
        .unwrap();
        assert_eq!(id.workload, "billing-v1-abc");
        assert_eq!(
            id.spiffe_id(),
            "spiffe://cluster.local/ns/voicecore-ai/sa/billing"
        );
    }

    #[test]
    fn rejections_say_why() {
        let e = identity_from_review(&answer(false, "", None), "istio-ca", "td").unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e =
            identity_from_review(&answer(true, "alice", Some("p")), "istio-ca", "td").unwrap_err();
        assert!(e.contains("not a service account"), "{e}");
        let e = identity_from_review(
            &answer(true, "system:serviceaccount:ns:sa", None),
            "istio-ca",
            "td",
        )
        .unwrap_err();
        assert!(e.contains("not bound to a pod"), "{e}");
        let e = identity_from_review(
            &answer(true, "system:serviceaccount:ns:sa", Some("p")),
            "other-aud",
            "td",
        )
        .unwrap_err();
        assert!(e.contains("audiences"), "{e}");
    }

    #[test]
    fn expiry_from_the_jwt() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"exp":1700000000,"sub":"x"}"#)
        );
        assert_eq!(
            token_expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(token_expiry("garbage"), None);
    }
}

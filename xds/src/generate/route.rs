//! VirtualService HTTP routes → Envoy routes, shared by sidecar outbound and gateway listeners.

use super::Index;
use super::cluster::EffectivePolicy;
use super::cluster::outbound_name;
use super::common::*;
use crate::resource::any;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent, header_value_option,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster, header_matcher, query_parameter_matcher,
    redirect_action, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use meshd_model::mesh::qualify_host;
use meshd_model::networking::Labels;
use meshd_model::networking::{
    CorsPolicy, Destination, HeaderOperations, HttpMatchRequest, HttpRetry, HttpRoute, Percent,
    StringMatch, StringMatchKind,
};
use meshd_model::registry::selector_matches;
use std::time::Duration;

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Where the routes are being built: the port of the listener, the namespace of the VS, and
/// the proxy they are for (`None`: the mesh's sidecars; else the gateway, as namespace/name).
pub struct RouteCtx<'a> {
    pub index: &'a Index,
    pub listener_port: u32,
    pub namespace: &'a str,
    pub gateway: Option<(&'a str, &'a str)>,
    /// The proxy's namespace and (when some route matches on them) its labels, for
    /// `sourceNamespace` and `sourceLabels` matches.
    pub source: Option<(&'a str, Option<&'a Labels>)>,
    /// The DestinationRules with a `workloadSelector` selecting the proxy.
    pub rules: &'a super::selected::SelectedRules,
}

impl RouteCtx<'_> {
    /// Whether a match's `sourceNamespace` / `sourceLabels` admit the proxy.
    pub fn source_listed(&self, m: &HttpMatchRequest) -> bool {
        self.source_admits(&m.source_labels, m.source_namespace.as_deref())
    }

    /// Whether a match's `sourceLabels` / `sourceNamespace` admit the proxy (any match kind).
    pub fn source_admits(&self, source_labels: &Labels, source_namespace: Option<&str>) -> bool {
        let ns_ok =
            source_namespace.is_none_or(|want| self.source.is_some_and(|(ns, _)| ns == want));
        let labels_ok = source_labels.is_empty()
            || self
                .source
                .and_then(|(_, labels)| labels)
                .is_some_and(|labels| selector_matches(source_labels, labels));
        ns_ok && labels_ok
    }

    /// Whether a match's `gateways` list (Istio: `mesh`, `name` or `namespace/name`, names
    /// relative to the VirtualService's namespace) applies where these routes are built.
    pub fn gateway_listed(&self, gateways: &[String]) -> bool {
        if gateways.is_empty() {
            return true;
        }
        gateways
            .iter()
            .any(|g| match (self.gateway, g.split_once('/')) {
                (None, _) => g == "mesh",
                (Some((ns, name)), Some((gns, gname))) => gns == ns && gname == name,
                (Some((ns, name)), None) => g == name && self.namespace == ns,
            })
    }
}

/// A VS destination's qualified host and port: explicit port, else the service's only port,
/// else the listener's port.
fn destination_host_port(ctx: &RouteCtx<'_>, d: &Destination) -> (String, u32) {
    let host = qualify_host(&d.host, ctx.namespace, &ctx.index.domain_suffix);
    let port = d.port.as_ref().map(|p| p.number).unwrap_or_else(|| {
        match ctx.index.service(&host).map(|s| s.ports.as_slice()) {
            Some([only]) => only.number,
            _ => ctx.listener_port,
        }
    });
    (host, port)
}

/// The cluster for a VS destination.
pub fn destination_cluster(ctx: &RouteCtx<'_>, d: &Destination) -> String {
    let (host, port) = destination_host_port(ctx, d);
    outbound_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

/// The destination's DestinationRule `consistentHash` (subset over port over top level) as the
/// route's hash policy: Envoy hashes on the route, the cluster only says RING_HASH.
pub fn hash_policy(ctx: &RouteCtx<'_>, d: &Destination) -> Vec<route_action::HashPolicy> {
    use route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let (host, port) = destination_host_port(ctx, d);
    let viewer = ctx.source.map_or("", |(ns, _)| ns);
    let Some(rule) = ctx.index.rule_for(&host, viewer, ctx.rules) else {
        return Vec::new();
    };
    let subset = d
        .subset
        .as_ref()
        .and_then(|name| rule.subsets.iter().find(|s| &s.name == name));
    let policy = EffectivePolicy::resolve(rule.traffic_policy.as_deref(), subset, port);
    let Some(ch) = policy
        .load_balancer
        .as_ref()
        .and_then(|l| l.consistent_hash.as_ref())
    else {
        return Vec::new();
    };
    let specifier = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(duration),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return Vec::new();
    };
    vec![route_action::HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }]
}

/// A route's `corsPolicy` as the CORS filter's per-route config.
pub fn cors_policy(
    c: &CorsPolicy,
) -> envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
    envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
        allow_origin_string_match: c
            .allow_origins
            .iter()
            .map(|m| string_matcher(m, false))
            .collect(),
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.and_then(boolv),
        ..Default::default()
    }
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> StringMatcher {
    let pattern = match m.kind() {
        Some(StringMatchKind::Exact(s)) => string_matcher::MatchPattern::Exact(s.into()),
        Some(StringMatchKind::Prefix(s)) => string_matcher::MatchPattern::Prefix(s.into()),
        Some(StringMatchKind::Regex(s)) => string_matcher::MatchPattern::SafeRegex(regex(s)),
        None => string_matcher::MatchPattern::Prefix(String::new()),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn regex(s: &str) -> RegexMatcher {
    RegexMatcher {
        regex: s.to_string(),
        ..Default::default()
    }
}

fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            string_matcher(m, false),
        )),
        invert_match: invert,
        ..Default::default()
    }
}

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
    };
    let ignore_case = m.ignore_uri_case.unwrap_or(false);
    let path_specifier = match m.uri.as_ref().and_then(|u| u.kind()) {
        Some(StringMatchKind::Exact(p)) => route_match::PathSpecifier::Path(p.into()),
        Some(StringMatchKind::Prefix(p)) => route_match::PathSpecifier::Prefix(p.into()),
        Some(StringMatchKind::Regex(r)) => route_match::PathSpecifier::SafeRegex(regex(r)),
        None => route_match::PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(k, v)| header(k, v, false))
        .chain(m.without_headers.iter().map(|(k, v)| header(k, v, true)))
        .collect();
    if let Some(method) = &m.method {
        headers.push(header(":method", method, false));
    }
    if let Some(authority) = &m.authority {
        headers.push(header(":authority", authority, false));
    }
    if let Some(scheme) = &m.scheme {
        headers.push(header(":scheme", scheme, false));
    }
    RouteMatch {
        path_specifier: Some(path_specifier),
        case_sensitive: boolv(!ignore_case),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(k, v)| QueryParameterMatcher {
                name: k.clone(),
                query_parameter_match_specifier: Some(
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(v, false),
                    ),
                ),
            })
            .collect(),
        ..Default::default()
    }
}

fn fraction(p: Option<&Percent>) -> FractionalPercent {
    // Millionths keep Istio's fractional percentages (e.g. 0.1 %) exact enough.
    let value = p.map(|p| p.value).unwrap_or(100.0);
    FractionalPercent {
        numerator: (value * 10_000.0).round() as u32,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

/// Istio's default when a VirtualService sets no retries.
fn default_retry() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: u32v(2),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_hosts() -> envoy_types::pb::envoy::config::route::v3::retry_policy::RetryHostPredicate {
    use envoy_types::pb::envoy::config::route::v3::retry_policy::{
        RetryHostPredicate, retry_host_predicate,
    };
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".into(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate {},
        ))),
    }
}

fn retry(r: &HttpRetry) -> Option<RetryPolicy> {
    if r.attempts == 0 {
        return None;
    }
    let mut retry_on = Vec::new();
    let mut codes = Vec::new();
    for cond in r
        .retry_on
        .as_deref()
        .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503")
        .split(',')
    {
        let cond = cond.trim();
        match cond.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) if !cond.is_empty() => retry_on.push(cond.to_string()),
            Err(_) => {}
        }
    }
    if !codes.is_empty() && !retry_on.iter().any(|c| c == "retriable-status-codes") {
        retry_on.push("retriable-status-codes".into());
    }
    Some(RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: u32v(r.attempts),
        per_try_timeout: r.per_try_timeout.map(duration),
        retriable_status_codes: codes,
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    })
}

fn header_ops(ops: Option<&HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else {
        return (Vec::new(), Vec::new());
    };
    let value = |k: &String, v: &String, append| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: append as i32,
        ..Default::default()
    };
    let add = ops
        .set
        .iter()
        .map(|(k, v)| {
            value(
                k,
                v,
                header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .chain(ops.add.iter().map(|(k, v)| {
            value(
                k,
                v,
                header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
            )
        }))
        .collect();
    (add, ops.remove.clone())
}

fn fault(r: &HttpRoute) -> Option<HttpFault> {
    let f = r.fault.as_ref()?;
    Some(HttpFault {
        delay: f.delay.as_ref().and_then(|d| {
            Some(FaultDelay {
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                    d.fixed_delay?,
                ))),
                percentage: Some(fraction(d.percentage.as_ref())),
            })
        }),
        abort: f.abort.as_ref().and_then(|a| {
            Some(FaultAbort {
                error_type: Some(fault_abort::ErrorType::HttpStatus(a.http_status?)),
                percentage: Some(fraction(a.percentage.as_ref())),
                ..Default::default()
            })
        }),
        ..Default::default()
    })
}

fn action(ctx: &RouteCtx<'_>, r: &HttpRoute, prefix_matched: bool) -> route::Action {
    if let Some(redirect) = &r.redirect {
        return route::Action::Redirect(RedirectAction {
            host_redirect: redirect.authority.clone().unwrap_or_default(),
            port_redirect: redirect.port.unwrap_or(0),
            response_code: match redirect.redirect_code.unwrap_or(301) {
                302 => redirect_action::RedirectResponseCode::Found,
                303 => redirect_action::RedirectResponseCode::SeeOther,
                307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
                308 => redirect_action::RedirectResponseCode::PermanentRedirect,
                _ => redirect_action::RedirectResponseCode::MovedPermanently,
            } as i32,
            scheme_rewrite_specifier: redirect
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: redirect
                .uri
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect),
            ..Default::default()
        });
    }
    if let Some(dr) = &r.direct_response {
        return route::Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body: dr
                .body
                .as_ref()
                .and_then(|b| b.string.as_deref())
                .map(|s| inline_bytes(s.as_bytes())),
            ..Default::default()
        });
    }
    let cluster_specifier = if let [only] = r.route.as_slice() {
        route_action::ClusterSpecifier::Cluster(destination_cluster(ctx, &only.destination))
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: r
                .route
                .iter()
                .filter(|d| d.weight.unwrap_or(0) > 0)
                .map(|d| {
                    let (add, remove) =
                        header_ops(d.headers.as_ref().and_then(|h| h.request.as_ref()));
                    let (resp_add, resp_remove) =
                        header_ops(d.headers.as_ref().and_then(|h| h.response.as_ref()));
                    weighted_cluster::ClusterWeight {
                        name: destination_cluster(ctx, &d.destination),
                        weight: u32v(d.weight.unwrap_or(0)),
                        request_headers_to_add: add,
                        request_headers_to_remove: remove,
                        response_headers_to_add: resp_add,
                        response_headers_to_remove: resp_remove,
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        })
    };
    let mut ra = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // Istio hashes by the first destination's DestinationRule.
        hash_policy: r
            .route
            .first()
            .map(|d| hash_policy(ctx, &d.destination))
            .unwrap_or_default(),
        // Istio disables Envoy's 15 s default: no timeout unless the VirtualService sets one.
        timeout: Some(duration(r.timeout.unwrap_or(Duration::ZERO))),
        retry_policy: match &r.retries {
            Some(rr) => retry(rr),
            None => Some(default_retry()),
        },
        ..Default::default()
    };
    if let Some(rw) = &r.rewrite {
        if let Some(uri) = &rw.uri {
            if prefix_matched {
                ra.prefix_rewrite = uri.clone();
            } else {
                ra.regex_rewrite = Some(
                    envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute {
                        pattern: Some(regex("^.*$")),
                        substitution: uri.clone(),
                    },
                );
            }
        }
        if let Some(auth) = &rw.authority {
            ra.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(auth.clone()),
            );
        }
    }
    if let Some(m) = &r.mirror {
        ra.request_mirror_policies = vec![route_action::RequestMirrorPolicy {
            cluster: destination_cluster(ctx, m),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(fraction(r.mirror_percentage.as_ref())),
                runtime_key: String::new(),
            }),
            ..Default::default()
        }];
    }
    route::Action::Route(ra)
}

/// One Envoy route per match of each HTTP route (Istio ORs the matches of a route).
pub fn http_routes(ctx: &RouteCtx<'_>, routes: &[HttpRoute]) -> Vec<Route> {
    let mut out = Vec::new();
    for r in routes {
        let matches: Vec<Option<&HttpMatchRequest>> = if r.matches.is_empty() {
            vec![None]
        } else {
            // A match that names other gateways (or only `mesh`, on a gateway) is not ours; a
            // route none of whose matches is ours is left out.
            r.matches
                .iter()
                .filter(|m| ctx.gateway_listed(&m.gateways) && ctx.source_listed(m))
                .map(Some)
                .collect()
        };
        let (req_add, req_remove) = header_ops(r.headers.as_ref().and_then(|h| h.request.as_ref()));
        let (resp_add, resp_remove) =
            header_ops(r.headers.as_ref().and_then(|h| h.response.as_ref()));
        for m in matches {
            if m.and_then(|m| m.port)
                .is_some_and(|p| p != ctx.listener_port)
            {
                continue;
            }
            let prefix_matched = m
                .and_then(|m| m.uri.as_ref())
                .and_then(|u| u.kind())
                .is_none_or(|k| matches!(k, StringMatchKind::Prefix(_)));
            let mut envoy_route = Route {
                name: r.name.clone().unwrap_or_default(),
                r#match: Some(route_match(m)),
                action: Some(action(ctx, r, prefix_matched)),
                request_headers_to_add: req_add.clone(),
                request_headers_to_remove: req_remove.clone(),
                response_headers_to_add: resp_add.clone(),
                response_headers_to_remove: resp_remove.clone(),
                typed_per_filter_config: super::common::stable_map(),
                ..Default::default()
            };
            if let Some(f) = fault(r) {
                envoy_route
                    .typed_per_filter_config
                    .insert(FAULT_FILTER.into(), any(&f));
            }
            if let Some(c) = &r.cors_policy {
                envoy_route
                    .typed_per_filter_config
                    .insert(CORS_FILTER.into(), any(&cors_policy(c)));
            }
            out.push(envoy_route);
        }
    }
    out
}

/// The route for a service no VirtualService names: all traffic to its cluster.
pub fn default_route(cluster: String) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(route_match(None)),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(duration(Duration::ZERO)),
            retry_policy: Some(default_retry()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

//! The EnvoyFilter patch shapes meshd applies (`ConfigPatch::kind`): context, operation,
//! match and value of each applyTo, checked against Istio's rules; anything else is an error
//! naming the field.

use super::*;

/// Which generated listeners a listener-level patch (HTTP_FILTER, NETWORK_FILTER) applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchContext {
    /// A sidecar's `virtualInbound` listener.
    SidecarInbound,
    /// A sidecar's outbound listeners (`virtualOutbound` and the per-port ones).
    SidecarOutbound,
    /// A gateway's listeners.
    Gateway,
    Any,
}

impl PatchContext {
    pub(super) fn parse(m: Option<&ObjectMatch>) -> Result<PatchContext, String> {
        match m.and_then(|m| m.context.as_deref()).unwrap_or("ANY") {
            "SIDECAR_INBOUND" => Ok(PatchContext::SidecarInbound),
            "SIDECAR_OUTBOUND" => Ok(PatchContext::SidecarOutbound),
            "GATEWAY" => Ok(PatchContext::Gateway),
            "ANY" => Ok(PatchContext::Any),
            other => Err(format!(
                "match.context `{other}` is not one of SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY, ANY"
            )),
        }
    }

    /// Whether a listener generated for `proxy` (never `Any`) is in this context.
    pub fn includes(self, proxy: PatchContext) -> bool {
        self == PatchContext::Any || self == proxy
    }
}

/// A patch operation on a list of named filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOperation {
    Merge,
    Add,
    Remove,
    InsertBefore,
    InsertAfter,
    InsertFirst,
    Replace,
}

impl FilterOperation {
    /// Istio's name of the operation.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterOperation::Merge => "MERGE",
            FilterOperation::Add => "ADD",
            FilterOperation::Remove => "REMOVE",
            FilterOperation::InsertBefore => "INSERT_BEFORE",
            FilterOperation::InsertAfter => "INSERT_AFTER",
            FilterOperation::InsertFirst => "INSERT_FIRST",
            FilterOperation::Replace => "REPLACE",
        }
    }

    fn parse(op: &str) -> Result<FilterOperation, String> {
        Ok(match op {
            "MERGE" => FilterOperation::Merge,
            "ADD" => FilterOperation::Add,
            "REMOVE" => FilterOperation::Remove,
            "INSERT_BEFORE" => FilterOperation::InsertBefore,
            "INSERT_AFTER" => FilterOperation::InsertAfter,
            "INSERT_FIRST" => FilterOperation::InsertFirst,
            "REPLACE" => FilterOperation::Replace,
            other => {
                return Err(format!(
                    "patch.operation `{other}` is not one of MERGE, ADD, REMOVE, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST, REPLACE"
                ));
            }
        })
    }
}

/// `patch.filterClass`: where an added HTTP filter goes among the filters meshd generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterClass {
    /// After the authentication filters (JWT).
    Authn,
    /// After the authorization filters (RBAC).
    Authz,
    /// Before the stats filters; meshd's telemetry is its access log, so: before the router.
    Stats,
}

impl FilterClass {
    /// `None` for no class or UNSPECIFIED (a plain ADD).
    fn parse(v: Option<&str>) -> Result<Option<FilterClass>, String> {
        Ok(match v {
            None | Some("UNSPECIFIED") => None,
            Some("AUTHN") => Some(FilterClass::Authn),
            Some("AUTHZ") => Some(FilterClass::Authz),
            Some("STATS") => Some(FilterClass::Stats),
            Some(other) => {
                return Err(format!(
                    "patch.filterClass `{other}` is not one of UNSPECIFIED, AUTHN, AUTHZ, STATS"
                ));
            }
        })
    }
}

/// An HTTP_FILTER or NETWORK_FILTER patch: where it applies and what it does.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterPatch<'a> {
    pub context: PatchContext,
    /// `match.listener` (portNumber, name, filterChain); every field optional.
    pub listener: &'a ListenerMatch,
    pub operation: FilterOperation,
    /// The filter the operation is relative to: `subFilter.name` for HTTP filters,
    /// `filter.name` for network filters (`None`: none named).
    pub relative_to: Option<&'a str>,
    /// An Envoy `HttpFilter` / `Filter` (proto JSON); `None` only for REMOVE.
    pub value: Option<&'a serde_json::Value>,
    /// `patch.filterClass` of an HTTP_FILTER ADD.
    pub filter_class: Option<FilterClass>,
}

/// A patch on whole resources or list entries (listeners, filter chains, clusters, route
/// configurations, virtual hosts, routes): where it applies and what it does.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectPatch<'a, M> {
    pub context: PatchContext,
    pub m: &'a M,
    pub operation: FilterOperation,
    /// The Envoy message (proto JSON); `None` only for REMOVE.
    pub value: Option<&'a serde_json::Value>,
}

/// Which level of a route configuration a route patch works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteLevel {
    /// ROUTE_CONFIGURATION: MERGE into the whole configuration.
    Configuration,
    /// VIRTUAL_HOST: MERGE, ADD, REMOVE of virtual hosts.
    VirtualHost,
    /// HTTP_ROUTE: every list operation on a virtual host's routes.
    Route,
}

/// What one supported patch does, for the generator.
#[derive(Clone, Debug, PartialEq)]
pub enum PatchKind<'a> {
    /// An operation on the HTTP filters of the HTTP connection managers of matching listeners.
    HttpFilter(FilterPatch<'a>),
    /// An operation on the network filters of matching filter chains.
    NetworkFilter(FilterPatch<'a>),
    /// LISTENER: MERGE into, ADD or REMOVE whole listeners.
    Listener(ObjectPatch<'a, ListenerMatch>),
    /// FILTER_CHAIN: MERGE into, ADD to or REMOVE from the chains of matching listeners.
    FilterChain(ObjectPatch<'a, ListenerMatch>),
    /// LISTENER_FILTER: an operation on the listener filters of matching listeners, relative to
    /// `match.listener.listenerFilter`.
    ListenerFilter(ObjectPatch<'a, ListenerMatch>),
    /// CLUSTER: MERGE into, ADD or REMOVE clusters.
    Cluster(ObjectPatch<'a, ClusterMatch>),
    /// ROUTE_CONFIGURATION, VIRTUAL_HOST, HTTP_ROUTE.
    Route(RouteLevel, ObjectPatch<'a, RouteConfigurationMatch>),
    /// EXTENSION_CONFIG: ADD a `TypedExtensionConfig` meshd serves over ECDS to the selected
    /// proxies, for the HTTP filters whose `config_discovery` names it.
    ExtensionConfig(ObjectPatch<'a, ()>),
    /// BOOTSTRAP: MERGE into the bootstrap of the selected proxies. Envoy reads its bootstrap
    /// once, at start, so a proxy gets the patches that select it when it starts (`meshd
    /// bootstrap` asks meshd for them), as Istio's agent fetches its bootstrap from istiod.
    Bootstrap(ObjectPatch<'a, ()>),
}

/// The Envoy filters that must stay last in their list (Envoy refuses a filter after them).
pub const TERMINAL_FILTERS: [&str; 3] = [ROUTER, HCM, TCP_PROXY];
pub const ROUTER: &str = "envoy.filters.http.router";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

pub(super) fn context_is(m: Option<&ObjectMatch>, allowed: &[&str]) -> Result<String, String> {
    let ctx = m
        .and_then(|m| m.context.clone())
        .unwrap_or_else(|| "ANY".into());
    if allowed.contains(&ctx.as_str()) {
        Ok(ctx)
    } else {
        Err(format!(
            "match.context {ctx} is not supported here (meshd supports {})",
            allowed.join(", ")
        ))
    }
}

static ANY_LISTENER: ListenerMatch = ListenerMatch {
    port_number: None,
    filter_chain: None,
    listener_filter: None,
    name: None,
};
static ANY_CLUSTER: ClusterMatch = ClusterMatch {
    port_number: None,
    service: None,
    subset: None,
    name: None,
};
pub(super) static ANY_ROUTE_CONFIGURATION: RouteConfigurationMatch = RouteConfigurationMatch {
    port_number: None,
    port_name: None,
    gateway: None,
    vhost: None,
    name: None,
};

impl ConfigPatch {
    /// HTTP_FILTER and NETWORK_FILTER: the shared checks, then the filter named relative to.
    fn filter_patch(&self, http: bool) -> Result<FilterPatch<'_>, String> {
        let m = self.matches.as_ref();
        let context = PatchContext::parse(m)?;
        if m.is_some_and(|m| m.route_configuration.is_some() || m.cluster.is_some()) {
            return Err(format!(
                "match.{}: {} patches match a listener, not routes or clusters",
                if m.is_some_and(|m| m.cluster.is_some()) {
                    "cluster"
                } else {
                    "routeConfiguration"
                },
                self.apply_to
            ));
        }
        let listener = m.and_then(|m| m.listener.as_ref()).unwrap_or(&ANY_LISTENER);
        if listener.listener_filter.is_some() {
            return Err(format!(
                "match.listener.listenerFilter selects listener filters (applyTo LISTENER_FILTER), not {}",
                self.apply_to
            ));
        }
        let filter = listener
            .filter_chain
            .as_ref()
            .and_then(|fc| fc.filter.as_ref());
        let filter_name = filter.and_then(|f| f.name.as_deref());
        let sub = filter
            .and_then(|f| f.sub_filter.as_ref())
            .and_then(|s| s.name.as_deref());
        let relative_to = if http {
            if let Some(name) = filter_name
                && name != HCM
            {
                return Err(format!(
                    "match.listener.filterChain.filter.name: HTTP_FILTER patches apply inside {HCM}, not `{name}`"
                ));
            }
            sub
        } else {
            if sub.is_some() {
                return Err("match.listener.filterChain.filter.subFilter: NETWORK_FILTER patches select a network filter by filter.name; subFilter is for HTTP_FILTER".into());
            }
            filter_name
        };
        let operation = FilterOperation::parse(&self.patch.operation)?;
        let what = if http {
            "match.listener.filterChain.filter.subFilter.name"
        } else {
            "match.listener.filterChain.filter.name"
        };
        match operation {
            FilterOperation::Merge | FilterOperation::Remove | FilterOperation::Replace
                if relative_to.is_none() =>
            {
                return Err(format!(
                    "{} of {} needs {what}",
                    self.patch.operation, self.apply_to
                ));
            }
            FilterOperation::InsertAfter
                if relative_to.is_some_and(|n| TERMINAL_FILTERS.contains(&n)) =>
            {
                return Err(format!(
                    "{what}: INSERT_AFTER `{}` would put a filter after the terminal filter, which Envoy refuses",
                    relative_to.unwrap_or_default()
                ));
            }
            _ => {}
        }
        let value = match (operation, self.patch.value.as_ref()) {
            (FilterOperation::Remove, _) => None,
            (_, None) => return Err("patch.value is required".into()),
            (_, Some(v)) => {
                if !v.is_object() {
                    return Err("patch.value must be an object (Envoy's proto JSON)".into());
                }
                let named = v
                    .get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| !n.is_empty());
                if !named && operation != FilterOperation::Merge {
                    return Err("patch.value.name is required (the filter's name)".into());
                }
                Some(v)
            }
        };
        Ok(FilterPatch {
            context,
            listener,
            operation,
            relative_to,
            value,
            filter_class: FilterClass::parse(self.patch.filter_class.as_deref())?,
        })
    }

    /// The value of a whole-object patch: required (an object) but for REMOVE.
    pub(super) fn object_value(
        &self,
        operation: FilterOperation,
    ) -> Result<Option<&serde_json::Value>, String> {
        match (operation, self.patch.value.as_ref()) {
            (FilterOperation::Remove, _) => Ok(None),
            (_, None) => Err("patch.value is required".into()),
            (_, Some(v)) if !v.is_object() => {
                Err("patch.value must be an object (Envoy's proto JSON)".into())
            }
            (_, Some(v)) => Ok(Some(v)),
        }
    }

    /// Only `allowed` of `match.listener`, `match.routeConfiguration`, `match.cluster`.
    pub(super) fn only_match(&self, allowed: &str) -> Result<(), String> {
        let m = self.matches.as_ref();
        for (name, set) in [
            ("listener", m.is_some_and(|m| m.listener.is_some())),
            (
                "routeConfiguration",
                m.is_some_and(|m| m.route_configuration.is_some()),
            ),
            ("cluster", m.is_some_and(|m| m.cluster.is_some())),
        ] {
            if set && name != allowed {
                return Err(format!(
                    "match.{name}: {} patches match match.{allowed}",
                    self.apply_to
                ));
            }
        }
        Ok(())
    }

    pub(super) fn operation_in(
        &self,
        allowed: &[FilterOperation],
    ) -> Result<FilterOperation, String> {
        let op = FilterOperation::parse(&self.patch.operation)?;
        if allowed.contains(&op) {
            Ok(op)
        } else {
            Err(format!(
                "patch.operation {} is not supported for {} (Istio allows {})",
                self.patch.operation,
                self.apply_to,
                allowed
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// LISTENER_FILTER: Istio's operations on a listener's `listener_filters` (MERGE has no
    /// meaning there in Istio, and is refused); the filter named by
    /// `match.listener.listenerFilter` is the one REMOVE, REPLACE and INSERT_BEFORE/AFTER work
    /// relative to, and a listener without it is not patched.
    fn listener_filter_patch(&self) -> Result<ObjectPatch<'_, ListenerMatch>, String> {
        use FilterOperation::*;
        self.only_match("listener")?;
        let m = self.matches.as_ref();
        let context = PatchContext::parse(m)?;
        let operation =
            self.operation_in(&[Add, Remove, InsertBefore, InsertAfter, InsertFirst, Replace])?;
        let listener = m.and_then(|m| m.listener.as_ref()).unwrap_or(&ANY_LISTENER);
        if listener.filter_chain.is_some() {
            return Err("match.listener.filterChain: listener filters run before a filter chain is chosen; LISTENER_FILTER patches match whole listeners".into());
        }
        if matches!(operation, Remove | Replace | InsertBefore | InsertAfter)
            && listener.listener_filter.is_none()
        {
            return Err(format!(
                "{} of LISTENER_FILTER needs match.listener.listenerFilter",
                self.patch.operation
            ));
        }
        let value = self.object_value(operation)?;
        if let Some(v) = value {
            let named = v
                .get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| !n.is_empty());
            if !named {
                return Err("patch.value.name is required (the listener filter's name)".into());
            }
        }
        Ok(ObjectPatch {
            context,
            m: listener,
            operation,
            value,
        })
    }

    /// The supported shape of this patch, or why it is not supported.
    pub fn kind(&self) -> Result<PatchKind<'_>, String> {
        use FilterOperation::*;
        let m = self.matches.as_ref();
        if let Some(p) = m.and_then(|m| m.proxy.as_ref()) {
            p.compile()?;
        }
        let filter_class = FilterClass::parse(self.patch.filter_class.as_deref())?;
        if filter_class.is_some()
            && (self.apply_to != "HTTP_FILTER" || self.patch.operation != "ADD")
        {
            return Err(format!(
                "patch.filterClass orders an ADD of an HTTP_FILTER, not {} of {}",
                self.patch.operation, self.apply_to
            ));
        }
        match self.apply_to.as_str() {
            "HTTP_FILTER" => self.filter_patch(true).map(PatchKind::HttpFilter),
            "NETWORK_FILTER" => self.filter_patch(false).map(PatchKind::NetworkFilter),
            "LISTENER" | "FILTER_CHAIN" => {
                self.only_match("listener")?;
                let context = PatchContext::parse(m)?;
                let operation = self.operation_in(&[Merge, Add, Remove])?;
                let listener = m.and_then(|m| m.listener.as_ref()).unwrap_or(&ANY_LISTENER);
                if listener.listener_filter.is_some() {
                    return Err(format!(
                        "match.listener.listenerFilter selects listener filters (applyTo LISTENER_FILTER), not {}",
                        self.apply_to
                    ));
                }
                let chain = self.apply_to == "FILTER_CHAIN";
                if !chain && listener.filter_chain.is_some() {
                    return Err("match.listener.filterChain: LISTENER patches match whole listeners (use FILTER_CHAIN)".into());
                }
                if chain
                    && listener
                        .filter_chain
                        .as_ref()
                        .is_some_and(|fc| fc.filter.is_some())
                {
                    return Err("match.listener.filterChain.filter: FILTER_CHAIN patches match chains, not their filters (use NETWORK_FILTER)".into());
                }
                let value = self.object_value(operation)?;
                let patch = ObjectPatch {
                    context,
                    m: listener,
                    operation,
                    value,
                };
                Ok(if chain {
                    PatchKind::FilterChain(patch)
                } else {
                    PatchKind::Listener(patch)
                })
            }
            "LISTENER_FILTER" => self.listener_filter_patch().map(PatchKind::ListenerFilter),
            "EXTENSION_CONFIG" => {
                if m.is_some_and(|m| {
                    m.listener.is_some() || m.route_configuration.is_some() || m.cluster.is_some()
                }) {
                    return Err("match: EXTENSION_CONFIG patches select proxies (context, workloadSelector), not listeners, routes or clusters".into());
                }
                let context = PatchContext::parse(m)?;
                let operation = self.operation_in(&[Add])?;
                let value = self.object_value(operation)?;
                let named = value
                    .and_then(|v| v.get("name"))
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| !n.is_empty());
                if !named {
                    return Err("patch.value.name is required (the name HTTP filters' config_discovery asks for)".into());
                }
                Ok(PatchKind::ExtensionConfig(ObjectPatch {
                    context,
                    m: &(),
                    operation,
                    value,
                }))
            }
            "CLUSTER" => {
                self.only_match("cluster")?;
                let context = PatchContext::parse(m)?;
                let operation = self.operation_in(&[Merge, Add, Remove])?;
                let value = self.object_value(operation)?;
                if operation == Merge && value.is_some_and(|v| v.get("name").is_some()) {
                    return Err("patch.value.name: a MERGE cannot rename the cluster".into());
                }
                Ok(PatchKind::Cluster(ObjectPatch {
                    context,
                    m: m.and_then(|m| m.cluster.as_ref()).unwrap_or(&ANY_CLUSTER),
                    operation,
                    value,
                }))
            }
            "ROUTE_CONFIGURATION" | "VIRTUAL_HOST" | "HTTP_ROUTE" => self.route_patch(),
            "BOOTSTRAP" => {
                if m.is_some_and(|m| {
                    m.listener.is_some() || m.route_configuration.is_some() || m.cluster.is_some()
                }) {
                    return Err("match: BOOTSTRAP patches select proxies (context, proxy, workloadSelector), not listeners, routes or clusters".into());
                }
                let context = PatchContext::parse(m)?;
                let operation = self.operation_in(&[Merge])?;
                let value = self.object_value(operation)?;
                Ok(PatchKind::Bootstrap(ObjectPatch {
                    context,
                    m: &(),
                    operation,
                    value,
                }))
            }
            other => Err(format!(
                "applyTo {other} is not supported (meshd applies LISTENER, FILTER_CHAIN, LISTENER_FILTER, NETWORK_FILTER, HTTP_FILTER, ROUTE_CONFIGURATION, VIRTUAL_HOST, HTTP_ROUTE, CLUSTER, EXTENSION_CONFIG, BOOTSTRAP)"
            )),
        }
    }
}

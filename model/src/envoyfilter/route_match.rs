//! `match.routeConfiguration` of ROUTE_CONFIGURATION, VIRTUAL_HOST and HTTP_ROUTE patches: the
//! shapes meshd applies (`ConfigPatch::route_patch`) and what each selects, with Istio's
//! semantics: a route configuration by name and port, and on a gateway by the TLS-terminating
//! server it was generated for (`portName`, `gateway`); a virtual host by name and domain; a
//! route by name and action.

use super::*;

/// `vhost.route.action`: the kind of Envoy route action (`Route.action`) a route must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// `route`: forwards to a cluster.
    Route,
    /// `redirect`.
    Redirect,
    /// `direct_response`.
    DirectResponse,
}

impl RouteAction {
    /// `None` for ANY (or unset): every action matches.
    pub fn parse(v: Option<&str>) -> Result<Option<RouteAction>, String> {
        Ok(match v {
            None | Some("ANY") => None,
            Some("ROUTE") => Some(RouteAction::Route),
            Some("REDIRECT") => Some(RouteAction::Redirect),
            Some("DIRECT_RESPONSE") => Some(RouteAction::DirectResponse),
            Some(other) => {
                return Err(format!(
                    "match.routeConfiguration.vhost.route.action `{other}` is not one of ANY, ROUTE, REDIRECT, DIRECT_RESPONSE"
                ));
            }
        })
    }
}

/// The gateway server a route configuration was generated for: a TLS-terminating server has its
/// own (`https.<port>.<portName>.<gateway>.<namespace>`); plaintext servers share one with
/// none (`http.<port>`), as do sidecars' configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayServer<'a> {
    pub port_name: &'a str,
    pub gateway_namespace: &'a str,
    pub gateway_name: &'a str,
}

/// An optional string field, with Istio's reading of the empty string: not set.
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl RouteConfigurationMatch {
    /// Whether a route configuration (named `rc_name`, served on `port`, generated for
    /// `server`) of a gateway (`on_gateway`) or a sidecar matches. On a gateway a patch naming a
    /// port name or a Gateway matches only the configuration of that server; a sidecar's
    /// configurations have neither, and Istio ignores both there.
    pub fn matches_config(
        &self,
        rc_name: &str,
        port: u32,
        server: Option<GatewayServer<'_>>,
        on_gateway: bool,
    ) -> bool {
        self.name.as_deref().is_none_or(|n| n == rc_name)
            && self.port_number.is_none_or(|p| p == port)
            && (!on_gateway || self.matches_server(server))
    }

    fn matches_server(&self, server: Option<GatewayServer<'_>>) -> bool {
        set(&self.port_name).is_none_or(|p| server.is_some_and(|s| s.port_name == p))
            && set(&self.gateway).is_none_or(|g| {
                server.is_some_and(|s| {
                    g.split_once('/') == Some((s.gateway_namespace, s.gateway_name))
                })
            })
    }

    /// Whether a virtual host (named `name`, answering `domains`) of a matching route
    /// configuration matches: by name, and by `domainName` equal to one of its domains.
    pub fn matches_vhost(&self, name: &str, domains: &[String]) -> bool {
        let Some(v) = &self.vhost else {
            return true;
        };
        v.name.as_deref().is_none_or(|n| n == name)
            && set(&v.domain_name).is_none_or(|d| domains.iter().any(|x| x == d))
    }

    /// Whether a route (named `name`, whose action is `action`; `None`: none of the three
    /// Istio names) of a matching virtual host matches: by name, and by action unless ANY.
    pub fn matches_route(&self, name: &str, action: Option<RouteAction>) -> bool {
        let Some(r) = self.vhost.as_ref().and_then(|v| v.route.as_ref()) else {
            return true;
        };
        let action_ok = match RouteAction::parse(r.action.as_deref()) {
            Ok(None) => true,
            Ok(Some(want)) => action == Some(want),
            // Refused when the EnvoyFilter was read; matches nothing should it get here.
            Err(_) => false,
        };
        r.name.as_deref().is_none_or(|n| n == name) && action_ok
    }

    /// Whether the patch picks routes (by name or by a non-ANY action), rather than every route
    /// of the matched virtual hosts.
    pub fn selects_routes(&self) -> bool {
        self.vhost
            .as_ref()
            .and_then(|v| v.route.as_ref())
            .is_some_and(|r| {
                r.name.is_some()
                    || RouteAction::parse(r.action.as_deref()).is_ok_and(|a| a.is_some())
            })
    }
}

impl ConfigPatch {
    /// ROUTE_CONFIGURATION, VIRTUAL_HOST and HTTP_ROUTE: context, operation and match checked
    /// against Istio's rules.
    pub(super) fn route_patch(&self) -> Result<PatchKind<'_>, String> {
        use FilterOperation::*;
        self.only_match("routeConfiguration")?;
        let m = self.matches.as_ref();
        let context = context_is(m, &["SIDECAR_OUTBOUND", "GATEWAY", "ANY"])
            .and_then(|_| PatchContext::parse(m))?;
        let (level, ops): (RouteLevel, &[FilterOperation]) = match self.apply_to.as_str() {
            "ROUTE_CONFIGURATION" => (RouteLevel::Configuration, &[Merge]),
            "VIRTUAL_HOST" => (RouteLevel::VirtualHost, &[Merge, Add, Remove]),
            _ => (
                RouteLevel::Route,
                &[Merge, Add, Remove, InsertBefore, InsertAfter, InsertFirst],
            ),
        };
        let operation = self.operation_in(ops)?;
        let rc = m
            .and_then(|m| m.route_configuration.as_ref())
            .unwrap_or(&ANY_ROUTE_CONFIGURATION);
        if let Some(g) = set(&rc.gateway) {
            let well_formed = g.split_once('/').is_some_and(|(ns, name)| {
                !ns.is_empty() && !name.is_empty() && !name.contains('/')
            });
            if !well_formed {
                return Err(format!(
                    "match.routeConfiguration.gateway `{g}` is not namespace/name"
                ));
            }
        }
        let vhost = rc.vhost.as_ref();
        let route = vhost.and_then(|v| v.route.as_ref());
        RouteAction::parse(route.and_then(|r| r.action.as_deref()))?;
        let vhost_picked = vhost.is_some_and(|v| v.name.is_some() || set(&v.domain_name).is_some());
        match (level, operation) {
            (RouteLevel::Configuration, _) if vhost.is_some() => {
                return Err("match.routeConfiguration.vhost: ROUTE_CONFIGURATION patches match whole configurations".into());
            }
            (RouteLevel::VirtualHost, Merge | Remove) if !vhost_picked => {
                return Err(format!(
                    "{} of VIRTUAL_HOST needs match.routeConfiguration.vhost.name or vhost.domainName",
                    self.patch.operation
                ));
            }
            (RouteLevel::Route, Remove | InsertBefore | InsertAfter) if !rc.selects_routes() => {
                return Err(format!(
                    "{} of HTTP_ROUTE needs match.routeConfiguration.vhost.route.name or a route.action other than ANY",
                    self.patch.operation
                ));
            }
            _ => {}
        }
        let value = self.object_value(operation)?;
        if matches!(level, RouteLevel::VirtualHost) && operation == Add {
            let named = value
                .and_then(|v| v.get("name"))
                .and_then(|n| n.as_str())
                .is_some_and(|n| !n.is_empty());
            if !named {
                return Err("patch.value.name is required (the virtual host's name)".into());
            }
        }
        Ok(PatchKind::Route(
            level,
            ObjectPatch {
                context,
                m: rc,
                operation,
                value,
            },
        ))
    }
}

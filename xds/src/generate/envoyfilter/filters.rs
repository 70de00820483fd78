//! HTTP_FILTER and NETWORK_FILTER patches applied to a generated `Listener`: which filter chains
//! a patch's `match.listener` selects, and each operation on a list of named filters (Istio's
//! semantics, with ADD kept ahead of the terminal filter Envoy requires last).

use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter as network_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use meshd_model::envoyfilter::{
    FilterClass, FilterOperation, HCM, ListenerMatch, PatchContext, TERMINAL_FILTERS,
};
use prost::{Message, Name};

/// A decoded filter patch value.
#[derive(Clone, Debug)]
pub(super) enum FilterValue {
    Http(HttpFilter),
    Network(Filter),
}

/// One HTTP_FILTER or NETWORK_FILTER patch, decoded.
#[derive(Clone, Debug)]
pub(super) struct FilterPatch {
    pub(super) context: PatchContext,
    pub(super) listener: ListenerMatch,
    pub(super) operation: FilterOperation,
    pub(super) relative_to: Option<String>,
    /// `None` only for REMOVE; otherwise the kind says HTTP_FILTER or NETWORK_FILTER.
    pub(super) value: Option<FilterValue>,
    pub(super) http: bool,
    /// An HTTP_FILTER ADD's `filterClass`.
    pub(super) filter_class: Option<FilterClass>,
}

/// Merges an `Any` into another as protobuf does for the message it holds (fields of the patch
/// replace or extend the original's) when both hold the same type; otherwise the patch's wins.
fn merge_any(into: &mut Any, patch: &Any) {
    if into.type_url == patch.type_url {
        into.value.extend_from_slice(&patch.value);
    } else {
        *into = patch.clone();
    }
}

fn merge_http(into: &mut HttpFilter, patch: &HttpFilter) {
    use http_filter::ConfigType;
    let config = match (into.config_type.take(), &patch.config_type) {
        (Some(ConfigType::TypedConfig(mut a)), Some(ConfigType::TypedConfig(b))) => {
            merge_any(&mut a, b);
            Some(ConfigType::TypedConfig(a))
        }
        (_, Some(p)) => Some(p.clone()),
        (mine, None) => mine,
    };
    let rest = HttpFilter {
        config_type: None,
        ..patch.clone()
    };
    // Scalars the patch sets replace ours (protobuf merge); a failure leaves the filter as it was.
    let _ = into.merge(rest.encode_to_vec().as_slice());
    into.config_type = config;
}

fn merge_network(into: &mut Filter, patch: &Filter) {
    use network_filter::ConfigType;
    let config = match (into.config_type.take(), &patch.config_type) {
        (Some(ConfigType::TypedConfig(mut a)), Some(ConfigType::TypedConfig(b))) => {
            merge_any(&mut a, b);
            Some(ConfigType::TypedConfig(a))
        }
        (_, Some(p)) => Some(p.clone()),
        (mine, None) => mine,
    };
    if !patch.name.is_empty() {
        into.name = patch.name.clone();
    }
    into.config_type = config;
}

/// A list of named entries (filters, filter chains, virtual hosts, routes) an operation works on.
pub(super) trait Named: Clone {
    fn name(&self) -> &str;
    fn merge_from(&mut self, patch: &Self);
}

impl Named for HttpFilter {
    fn name(&self) -> &str {
        &self.name
    }
    fn merge_from(&mut self, patch: &Self) {
        merge_http(self, patch)
    }
}

impl Named for Filter {
    fn name(&self) -> &str {
        &self.name
    }
    fn merge_from(&mut self, patch: &Self) {
        merge_network(self, patch)
    }
}

/// Where an appended filter goes: before a trailing terminal filter (router, HCM, TCP proxy),
/// which Envoy refuses anywhere but last.
fn append_at<T: Named>(list: &[T]) -> usize {
    match list.last() {
        Some(last) if TERMINAL_FILTERS.contains(&last.name()) => list.len() - 1,
        _ => list.len(),
    }
}

/// Merges whole messages as protobuf does: what the patch sets replaces (scalars, and `Any`s
/// whole) or extends (messages, repeated fields) what is there.
macro_rules! named_by_merge {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn merge_from(&mut self, patch: &Self) {
                // A patch that does not merge (it decoded, so it always does) leaves it as it was.
                let _ = self.merge(patch.encode_to_vec().as_slice());
            }
        }
    )*};
}
named_by_merge!(
    FilterChain,
    envoy_types::pb::envoy::config::listener::v3::ListenerFilter,
    envoy_types::pb::envoy::config::route::v3::VirtualHost,
    envoy_types::pb::envoy::config::route::v3::Route
);

/// Applies one operation to a named list, relative to the entry named `relative_to`; whether it
/// changed. MERGE without a name merges into every entry.
pub(super) fn apply<T: Named>(
    list: &mut Vec<T>,
    op: FilterOperation,
    relative_to: Option<&str>,
    value: Option<&T>,
) -> bool {
    apply_where(
        list,
        op,
        relative_to.map(|n| move |f: &T| f.name() == n),
        value,
    )
}

/// Applies one operation to a list, relative to the entries `selected` picks (INSERT_BEFORE and
/// INSERT_AFTER: the first of them); whether it changed. Without `selected`, MERGE merges into
/// every entry (HTTP_ROUTE merges into every route of the matched virtual hosts), REMOVE and
/// REPLACE do nothing, INSERT_BEFORE and INSERT_FIRST insert first and INSERT_AFTER appends. A
/// selector that picks nothing: only ADD and MERGE-into-none apply (Istio's match).
pub(super) fn apply_where<T: Named>(
    list: &mut Vec<T>,
    op: FilterOperation,
    selected: Option<impl Fn(&T) -> bool>,
    value: Option<&T>,
) -> bool {
    let picked = |f: &T| selected.as_ref().is_some_and(|s| s(f));
    let found = selected.as_ref().map(|s| list.iter().position(s));
    match (op, value) {
        (FilterOperation::Remove, _) => {
            let before = list.len();
            list.retain(|f| !picked(f));
            list.len() != before
        }
        (FilterOperation::Merge, Some(v)) => {
            let mut changed = false;
            for f in list.iter_mut().filter(|f| selected.is_none() || picked(f)) {
                f.merge_from(v);
                changed = true;
            }
            changed
        }
        (FilterOperation::Replace, Some(v)) => {
            let mut changed = false;
            for f in list.iter_mut().filter(|f| picked(f)) {
                *f = v.clone();
                changed = true;
            }
            changed
        }
        (FilterOperation::Add, Some(v)) => {
            list.insert(append_at(list), v.clone());
            true
        }
        (FilterOperation::InsertFirst, Some(v)) => match found {
            // A named filter that is not there: the patch does not apply (Istio's match).
            Some(None) => false,
            _ => {
                list.insert(0, v.clone());
                true
            }
        },
        (FilterOperation::InsertBefore, Some(v)) => match found {
            None => {
                list.insert(0, v.clone());
                true
            }
            Some(Some(i)) => {
                list.insert(i, v.clone());
                true
            }
            Some(None) => false,
        },
        (FilterOperation::InsertAfter, Some(v)) => match found {
            None => {
                list.insert(append_at(list), v.clone());
                true
            }
            Some(Some(i)) => {
                list.insert(i + 1, v.clone());
                true
            }
            Some(None) => false,
        },
        (_, None) => false,
    }
}

/// The port a listener listens on.
pub(super) fn listener_port(l: &Listener) -> Option<u32> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    match l.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier.as_ref()? {
            socket_address::PortSpecifier::PortValue(p) => Some(*p),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a filter chain is selected by `match.listener` (its filterChain part; on
/// `virtualInbound` also portNumber, which Istio matches against the chain's destination port).
pub(super) fn chain_matches(m: &ListenerMatch, chain: &FilterChain, inbound: bool) -> bool {
    let fcm = chain.filter_chain_match.clone().unwrap_or_default();
    if inbound
        && let Some(p) = m.port_number
        && fcm.destination_port.map(|d| d.value) != Some(p)
    {
        return false;
    }
    let Some(fc) = &m.filter_chain else {
        return true;
    };
    fc.name.as_deref().is_none_or(|n| n == chain.name)
        && fc
            .sni
            .as_deref()
            .is_none_or(|s| fcm.server_names.iter().any(|n| n == s))
        && fc
            .transport_protocol
            .as_deref()
            .is_none_or(|t| t == fcm.transport_protocol)
        && fc
            .destination_port
            .is_none_or(|p| fcm.destination_port.map(|d| d.value) == Some(p))
        && fc.application_protocols.as_deref().is_none_or(|list| {
            list.split(',')
                .any(|a| fcm.application_protocols.iter().any(|x| x == a.trim()))
        })
}

/// The HTTP filters meshd generates that authenticate (JWT) and authorize (RBAC), by name.
const AUTHN_FILTERS: [&str; 1] = ["envoy.filters.http.jwt_authn"];
const AUTHZ_FILTERS: [&str; 2] = ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"];

/// Where an HTTP filter added with `class` goes: AUTHN right after the authentication filters
/// (at the start when there are none), AUTHZ right after the authorization filters (else where
/// AUTHN would go), STATS before the router (meshd generates no stats filter: its telemetry is
/// the access log).
pub(super) fn class_position(filters: &[HttpFilter], class: FilterClass) -> usize {
    let after_last = |names: &[&str]| {
        filters
            .iter()
            .rposition(|f| names.contains(&f.name.as_str()))
            .map(|i| i + 1)
    };
    match class {
        FilterClass::Authn => after_last(&AUTHN_FILTERS).unwrap_or(0),
        FilterClass::Authz => after_last(&AUTHZ_FILTERS)
            .or_else(|| after_last(&AUTHN_FILTERS))
            .unwrap_or(0),
        FilterClass::Stats => append_at(filters),
    }
}

/// Applies an HTTP_FILTER patch to the HCMs of a chain; whether it changed.
fn patch_hcms(chain: &mut FilterChain, p: &FilterPatch) -> bool {
    let value = match &p.value {
        Some(FilterValue::Http(f)) => Some(f),
        _ => None,
    };
    let mut changed = false;
    for f in chain.filters.iter_mut().filter(|f| f.name == HCM) {
        let Some(network_filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
            continue;
        };
        if any.type_url != HttpConnectionManager::type_url() {
            continue;
        }
        let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
            continue;
        };
        if let (FilterOperation::Add, Some(class), Some(v)) = (p.operation, p.filter_class, value) {
            let at = class_position(&hcm.http_filters, class);
            hcm.http_filters.insert(at, v.clone());
            any.value = hcm.encode_to_vec();
            changed = true;
            continue;
        }
        if apply(
            &mut hcm.http_filters,
            p.operation,
            p.relative_to.as_deref(),
            value,
        ) {
            any.value = hcm.encode_to_vec();
            changed = true;
        }
    }
    changed
}

/// Applies `patches` (in order) to a listener generated for a proxy in `proxy`'s context;
/// whether any changed it.
pub(super) fn patch_listener(
    listener: &mut Listener,
    proxy: PatchContext,
    patches: &[&FilterPatch],
) -> bool {
    let inbound = proxy == PatchContext::SidecarInbound;
    let port = listener_port(listener);
    let mut changed = false;
    for p in patches {
        let m = &p.listener;
        let listener_ok = p.context.includes(proxy)
            && m.name.as_deref().is_none_or(|n| n == listener.name)
            && (inbound || m.port_number.is_none_or(|n| Some(n) == port));
        if !listener_ok {
            continue;
        }
        let chains = listener
            .filter_chains
            .iter_mut()
            .chain(listener.default_filter_chain.as_mut());
        for chain in chains.filter(|c| chain_matches(m, c, inbound)) {
            // A named network filter the chain lacks deselects it (Istio's filter match).
            let filter_name = m
                .filter_chain
                .as_ref()
                .and_then(|fc| fc.filter.as_ref())
                .and_then(|f| f.name.as_deref());
            if filter_name.is_some_and(|n| !chain.filters.iter().any(|f| f.name == n)) {
                continue;
            }
            changed |= if p.http {
                patch_hcms(chain, p)
            } else {
                let value = match &p.value {
                    Some(FilterValue::Network(f)) => Some(f),
                    _ => None,
                };
                apply(
                    &mut chain.filters,
                    p.operation,
                    p.relative_to.as_deref(),
                    value,
                )
            };
        }
    }
    changed
}

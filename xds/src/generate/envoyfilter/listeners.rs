//! LISTENER and FILTER_CHAIN patches (MERGE, ADD, REMOVE), LISTENER_FILTER ones, and the
//! HTTP_FILTER and NETWORK_FILTER ones, applied in order to a layer of listeners.

use super::filters::{self, Named};
use super::{Compiled, Obj, Work, adds_to};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, ListenerFilter};
use meshd_model::envoyfilter::{FilterOperation, ListenerMatch, PatchContext};
use prost::Message;

/// Whether a listener is selected by `match.listener`'s name and portNumber (on `virtualInbound`
/// the port selects filter chains instead).
fn listener_matches(m: &ListenerMatch, l: &Listener, proxy: PatchContext) -> bool {
    m.name.as_deref().is_none_or(|n| n == l.name)
        && (proxy == PatchContext::SidecarInbound
            || m.port_number
                .is_none_or(|p| Some(p) == filters::listener_port(l)))
}

fn listener_patch(
    work: &mut Work<'_, Listener>,
    proxy: PatchContext,
    p: &Obj<ListenerMatch, Listener>,
) {
    match (p.operation, &p.value) {
        (FilterOperation::Add, Some(v)) if adds_to(p.context, proxy) => {
            work.add(v.name.clone(), v.clone());
        }
        (FilterOperation::Remove, _) => {
            for name in work.names() {
                if work
                    .get(&name)
                    .is_some_and(|l| listener_matches(&p.m, &l, proxy))
                {
                    work.remove(&name);
                }
            }
        }
        (FilterOperation::Merge, Some(v)) => {
            let patch = Listener {
                // A MERGE never renames: the resource name is what the proxy asked for.
                name: String::new(),
                ..v.clone()
            };
            for name in work.names() {
                work.update(&name, |l| {
                    listener_matches(&p.m, l, proxy)
                        && l.merge(patch.encode_to_vec().as_slice()).is_ok()
                });
            }
        }
        _ => {}
    }
}

fn chain_patch(
    work: &mut Work<'_, Listener>,
    proxy: PatchContext,
    p: &Obj<ListenerMatch, FilterChain>,
) {
    let inbound = proxy == PatchContext::SidecarInbound;
    for name in work.names() {
        work.update(&name, |l| {
            if !listener_matches(&p.m, l, proxy) {
                return false;
            }
            match (p.operation, &p.value) {
                (FilterOperation::Add, Some(v)) => {
                    l.filter_chains.push(v.clone());
                    true
                }
                (FilterOperation::Remove, _) => {
                    let before = l.filter_chains.len();
                    l.filter_chains
                        .retain(|c| !filters::chain_matches(&p.m, c, inbound));
                    let default_removed = l
                        .default_filter_chain
                        .take_if(|c| filters::chain_matches(&p.m, c, inbound))
                        .is_some();
                    default_removed || l.filter_chains.len() != before
                }
                (FilterOperation::Merge, Some(v)) => {
                    let mut changed = false;
                    let chains = l
                        .filter_chains
                        .iter_mut()
                        .chain(l.default_filter_chain.as_mut());
                    for c in chains.filter(|c| filters::chain_matches(&p.m, c, inbound)) {
                        c.merge_from(v);
                        changed = true;
                    }
                    changed
                }
                _ => false,
            }
        });
    }
}

/// A LISTENER_FILTER patch on every selected listener. A listener lacking the named listener
/// filter is not patched (Istio's listenerFilter match), ADD and INSERT_FIRST included.
fn listener_filter_patch(
    work: &mut Work<'_, Listener>,
    proxy: PatchContext,
    p: &Obj<ListenerMatch, ListenerFilter>,
) {
    let named = p.m.listener_filter.as_deref();
    for name in work.names() {
        work.update(&name, |l| {
            listener_matches(&p.m, l, proxy)
                && named.is_none_or(|n| l.listener_filters.iter().any(|f| f.name == n))
                && filters::apply(
                    &mut l.listener_filters,
                    p.operation,
                    named,
                    p.value.as_ref(),
                )
        });
    }
}

/// Applies the listener-layer patches, in order.
pub(super) fn apply(work: &mut Work<'_, Listener>, proxy: PatchContext, patches: &[&Compiled]) {
    for p in patches {
        match p {
            Compiled::Filter(f) => {
                for name in work.names() {
                    work.update(&name, |l| filters::patch_listener(l, proxy, &[f]));
                }
            }
            Compiled::Listener(o) => listener_patch(work, proxy, o),
            Compiled::FilterChain(o) => chain_patch(work, proxy, o),
            Compiled::ListenerFilter(o) => listener_filter_patch(work, proxy, o),
            _ => {}
        }
    }
}

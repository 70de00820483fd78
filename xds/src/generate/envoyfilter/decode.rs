//! Decoding an EnvoyFilter's patch values against Envoy's descriptors, once per snapshot. It
//! stands apart from applying them because a value that does not decode must reject its whole
//! EnvoyFilter up front (with the field it is about), before any proxy sees half of it.

use super::filters::{FilterPatch, FilterValue};
use super::{Compiled, HTTP_FILTER, NETWORK_FILTER, Obj};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, ListenerFilter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use meshd_model::envoyfilter::{
    FilterOperation, ListenerMatch, ObjectPatch, PatchContext, PatchKind, RouteLevel,
};
use meshd_model::{ConfigObject, Rejected};
use prost::{Message, Name};

pub(super) fn context(ctx: Option<&str>) -> (bool, bool) {
    match ctx.unwrap_or("ANY") {
        "GATEWAY" => (true, false),
        "SIDECAR_INBOUND" | "SIDECAR_OUTBOUND" => (false, true),
        _ => (true, true),
    }
}

pub(super) fn rejected(o: &ConfigObject, reason: String) -> Rejected {
    Rejected {
        file: o.source.file.clone(),
        line: o.source.line,
        kind: Some(o.kind()),
        namespace: Some(o.meta.namespace().to_string()),
        name: Some(o.meta.name.clone()),
        reason,
    }
}

/// The Envoy `@type`s in a patch value that meshd's descriptors (Envoy 1.40's) do not know, with
/// the path of the field holding each.
fn unknown_types(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            let typed_struct = o
                .get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with(".TypedStruct"));
            for (k, x) in o {
                let here = format!("{path}.{k}");
                let url = match k.as_str() {
                    "@type" if !typed_struct => x.as_str(),
                    "type_url" | "typeUrl" if typed_struct => x.as_str(),
                    _ => None,
                };
                match url {
                    Some(url) if !crate::json::knows_type(url) => out.push(format!(
                        "{here}: unknown type `{url}` (not an Envoy 1.40 type)"
                    )),
                    _ => unknown_types(x, &here, out),
                }
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                unknown_types(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes an HTTP_FILTER (`HttpFilter`) or NETWORK_FILTER (`Filter`) patch value; the error
/// starts with the field it is about, relative to `patch.value`.
fn decode_filter(
    f: &meshd_model::envoyfilter::FilterPatch<'_>,
    http: bool,
) -> Result<Option<FilterValue>, String> {
    let Some(value) = f.value else {
        return Ok(None);
    };
    let mut unknown = Vec::new();
    unknown_types(value, "", &mut unknown);
    if let Some(first) = unknown.into_iter().next() {
        return Err(first);
    }
    let configured = [
        "typed_config",
        "typedConfig",
        "config_discovery",
        "configDiscovery",
    ]
    .iter()
    .any(|k| value.get(k).is_some());
    if !configured && f.operation != FilterOperation::Merge {
        return Err(".typed_config (or, served over ECDS, .config_discovery) is required (Envoy 1.40 configures filters by type)".into());
    }
    let full_name = if http { HTTP_FILTER } else { NETWORK_FILTER };
    let bytes = crate::json::json_to_proto(full_name, value).map_err(|e| format!(": {e}"))?;
    let decoded = if http {
        HttpFilter::decode(bytes.as_slice()).map(FilterValue::Http)
    } else {
        Filter::decode(bytes.as_slice()).map(FilterValue::Network)
    };
    decoded.map(Some).map_err(|e| format!(": {e}"))
}

/// Decodes a whole-object patch's value as `V` (Envoy's `full_name`); the error starts with the
/// field it is about, relative to `patch.value`.
fn decode_object<M: Clone, V: Message + Name + Default>(
    p: &ObjectPatch<'_, M>,
) -> Result<Obj<M, V>, String> {
    let value = match p.value {
        None => None,
        Some(v) => {
            let mut unknown = Vec::new();
            unknown_types(v, "", &mut unknown);
            if let Some(first) = unknown.into_iter().next() {
                return Err(first);
            }
            let bytes =
                crate::json::json_to_proto(&V::full_name(), v).map_err(|e| format!(": {e}"))?;
            Some(V::decode(bytes.as_slice()).map_err(|e| format!(": {e}"))?)
        }
    };
    Ok(Obj {
        context: p.context,
        m: p.m.clone(),
        operation: p.operation,
        value,
    })
}

pub(super) fn compile(kind: PatchKind<'_>, http: bool) -> Result<Compiled, String> {
    Ok(match kind {
        PatchKind::HttpFilter(f) | PatchKind::NetworkFilter(f) => {
            let value = decode_filter(&f, http)?;
            Compiled::Filter(FilterPatch {
                context: f.context,
                listener: f.listener.clone(),
                operation: f.operation,
                relative_to: f.relative_to.map(str::to_string),
                value,
                http,
                filter_class: f.filter_class,
            })
        }
        PatchKind::Listener(p) => Compiled::Listener(decode_object(&p)?),
        PatchKind::FilterChain(p) => Compiled::FilterChain(decode_object(&p)?),
        PatchKind::ListenerFilter(p) => {
            let o: Obj<ListenerMatch, ListenerFilter> = decode_object(&p)?;
            if o.value.as_ref().is_some_and(|f| f.config_type.is_none()) {
                return Err(
                    ".typed_config is required (Envoy 1.40 configures filters by type)".into(),
                );
            }
            Compiled::ListenerFilter(o)
        }
        PatchKind::Cluster(p) => Compiled::Cluster(decode_object(&p)?),
        PatchKind::Route(RouteLevel::Configuration, p) => {
            Compiled::RouteConfiguration(decode_object(&p)?)
        }
        PatchKind::Route(RouteLevel::VirtualHost, p) => Compiled::VirtualHost(decode_object(&p)?),
        PatchKind::Route(RouteLevel::Route, p) => Compiled::HttpRoute(decode_object(&p)?),
        PatchKind::ExtensionConfig(p) => {
            let mut o: Obj<(), TypedExtensionConfig> = decode_object(&p)?;
            if o.value.as_ref().is_some_and(|v| v.typed_config.is_none()) {
                return Err(".typed_config is required (the filter's config)".into());
            }
            // A sidecar has one ECDS set for both sides: either sidecar context serves it.
            if o.context == PatchContext::SidecarInbound {
                o.context = PatchContext::SidecarOutbound;
            }
            Compiled::ExtensionConfig(o)
        }
        PatchKind::Bootstrap(p) => {
            let mut o: Obj<(), Bootstrap> = decode_object(&p)?;
            // A sidecar has one bootstrap for both sides: either sidecar context patches it.
            if o.context == PatchContext::SidecarInbound {
                o.context = PatchContext::SidecarOutbound;
            }
            Compiled::Bootstrap(o)
        }
    })
}

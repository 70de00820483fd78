//! Small builders shared by the cluster, route and listener generators.

use crate::resource::any;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SocketAddress,
    TransportSocket, address, config_source, data_source, socket_address, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};
use std::time::Duration;

/// The secret names Istio uses, kept so operators' tooling reads our config the same way.
pub const WORKLOAD_SECRET: &str = "default";
pub const ROOT_SECRET: &str = "ROOTCA";

/// An empty map for a prost `map` field with more than one entry. prost encodes a map in its
/// iteration order; maps sharing one hasher and filled in the same order iterate alike, so the
/// resource encodes to the same bytes (and keeps its version) from one build to the next.
pub fn stable_map<K, V>() -> std::collections::HashMap<K, V> {
    static STATE: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    std::collections::HashMap::with_hasher(STATE.get_or_init(Default::default).clone())
}

pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// An endpoint's address: a unix socket (`unix:///path`, `unix://@abstract`) as Envoy's pipe,
/// else an IP address and port.
pub fn endpoint_address(address: &str, port: u32) -> Address {
    match address.strip_prefix("unix://") {
        Some(path) => pipe_address(path),
        None => socket_address(address, port),
    }
}

/// A unix socket (`/path`, or `@name` in the abstract namespace) as Envoy's pipe.
pub fn pipe_address(path: &str) -> Address {
    Address {
        address: Some(address::Address::Pipe(
            envoy_types::pb::envoy::config::core::v3::Pipe {
                path: path.to_string(),
                ..Default::default()
            },
        )),
    }
}

/// Where a listener binds: as [`endpoint_address`], a socket path made connectable by the app's
/// uid (Envoy runs as its own; an abstract socket has no mode).
pub fn listener_address(address: &str, port: u32) -> Address {
    let mut a = endpoint_address(address, port);
    if let Some(address::Address::Pipe(pipe)) = a.address.as_mut()
        && pipe.path.starts_with('/')
    {
        pipe.mode = 0o666;
    }
    a
}

/// As `google.protobuf.Duration`, clamped to its range (the model's parser already bounds
/// durations; this keeps a value built elsewhere from wrapping negative).
pub fn duration(d: Duration) -> PbDuration {
    const MAX_SECONDS: i64 = meshd_model::duration::MAX_SECONDS as i64;
    let seconds = i64::try_from(d.as_secs()).map_or(MAX_SECONDS, |s| s.min(MAX_SECONDS));
    PbDuration {
        seconds,
        // Below 10^9.
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

pub fn boolv(v: bool) -> Option<BoolValue> {
    Some(BoolValue { value: v })
}

pub fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_string())),
        ..Default::default()
    }
}

pub fn prefix(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Prefix(s.to_string())),
        ..Default::default()
    }
}

pub fn inline_bytes(data: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(data.to_vec())),
        ..Default::default()
    }
}

pub fn filename(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// Istio's `subjectAltNames`: a `spiffe://` name is matched as a URI SAN, anything else as DNS.
pub fn san_matchers(names: &[String]) -> Vec<SubjectAltNameMatcher> {
    names
        .iter()
        .map(|san| SubjectAltNameMatcher {
            san_type: if san.starts_with("spiffe://") {
                subject_alt_name_matcher::SanType::Uri
            } else {
                subject_alt_name_matcher::SanType::Dns
            } as i32,
            matcher: Some(exact(san)),
            oid: String::new(),
        })
        .collect()
}

pub fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

fn uri_san(matcher: StringMatcher) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(matcher),
        oid: String::new(),
    }
}

/// Our certificate from SDS, peers checked against the mesh root and the given SAN matchers.
pub fn mesh_tls_context(peer_sans: Vec<StringMatcher>, alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: peer_sans.into_iter().map(uri_san).collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Client side of mesh mTLS: we present our SVID and accept only the destination's identities.
/// `alpn` tells the peer's inbound listener which codec to use (`h2`, `http/1.1`; `istio` for
/// TCP): stock Envoy picks the HTTP codec from the negotiated ALPN.
pub fn istio_mutual_upstream(
    sni: &str,
    peer_spiffe_ids: &[String],
    alpn: &[&str],
) -> TransportSocket {
    let sans = peer_spiffe_ids.iter().map(|id| exact(id)).collect();
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(mesh_tls_context(sans, alpn)),
        sni: sni.to_string(),
        ..Default::default()
    };
    tls_socket(any(&ctx))
}

/// Server side of mesh mTLS: a client certificate from this trust domain is required.
pub fn istio_mutual_downstream(trust_domain: &str) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(mesh_tls_context(
            vec![prefix(&format!("spiffe://{trust_domain}/"))],
            &["istio", "h2", "http/1.1"],
        )),
        require_client_certificate: boolv(true),
        ..Default::default()
    };
    tls_socket(any(&ctx))
}

pub fn tls_socket(typed: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(typed)),
    }
}

//! Envoy's request attributes read back from one access-log entry, for the values of metric
//! tags a Telemetry object upserts. Every value is what the reporting proxy logged about its own
//! traffic (it can only mislabel that), capped in length so a client's header cannot make a
//! label of any size; a value the entry does not carry is `unknown`, as Istio writes it.

use super::labels::{UNKNOWN, peer_uris, socket};
use envoy_types::pb::envoy::config::core::v3::{Address, RequestMethod};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
    http_access_log_entry::HttpVersion, tls_properties::TlsVersion,
};
use meshd_model::telemetry_tag::{Attribute, TagValue};

/// Longest label value kept from an entry; longer ones are cut at a character boundary.
pub const MAX_VALUE_BYTES: usize = 128;

/// What one entry (HTTP or TCP) says about its request.
pub struct EntryAttributes<'a> {
    pub common: &'a AccessLogCommon,
    pub request: Option<&'a HttpRequestProperties>,
    pub response: Option<&'a HttpResponseProperties>,
    pub http_version: Option<HttpVersion>,
}

impl<'a> EntryAttributes<'a> {
    pub fn http(common: &'a AccessLogCommon, entry: &'a HttpAccessLogEntry) -> Self {
        EntryAttributes {
            common,
            request: entry.request.as_ref(),
            response: entry.response.as_ref(),
            http_version: HttpVersion::try_from(entry.protocol_version).ok(),
        }
    }

    pub fn tcp(common: &'a AccessLogCommon) -> Self {
        EntryAttributes {
            common,
            request: None,
            response: None,
            http_version: None,
        }
    }

    /// The label value `value` gives for this entry.
    pub fn value(&self, value: &TagValue) -> String {
        let raw = match value {
            TagValue::Literal(s) => Some(s.clone()),
            TagValue::Attribute(a) => self.attribute(a),
        };
        match raw {
            Some(v) if !v.is_empty() => cap(v),
            _ => UNKNOWN.to_string(),
        }
    }

    fn attribute(&self, a: &Attribute) -> Option<String> {
        let req = self.request;
        let resp = self.response;
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Some(match a {
            Attribute::RequestHost => text(&req?.authority)?,
            Attribute::RequestMethod => RequestMethod::try_from(req?.request_method)
                .ok()
                .filter(|m| *m != RequestMethod::MethodUnspecified)?
                .as_str_name()
                .to_string(),
            Attribute::RequestPath => text(&req?.path)?,
            Attribute::RequestUrlPath => text(req?.path.split('?').next()?)?,
            Attribute::RequestQuery => req?.path.split_once('?')?.1.to_string(),
            Attribute::RequestScheme => text(&req?.scheme)?,
            Attribute::RequestProtocol => match self.http_version? {
                HttpVersion::Http10 => "HTTP/1.0",
                HttpVersion::Http11 => "HTTP/1.1",
                HttpVersion::Http2 => "HTTP/2",
                HttpVersion::Http3 => "HTTP/3",
                HttpVersion::ProtocolUnspecified => return None,
            }
            .to_string(),
            Attribute::RequestUserAgent => text(&req?.user_agent)?,
            Attribute::RequestReferer => text(&req?.referer)?,
            Attribute::RequestId => text(&req?.request_id)?,
            Attribute::RequestHeader(h) => req?.request_headers.get(h)?.clone(),
            Attribute::ResponseCode => resp?.response_code?.value.to_string(),
            Attribute::ResponseCodeDetails => text(&resp?.response_code_details)?,
            Attribute::ResponseGrpcStatus => resp?
                .response_trailers
                .get("grpc-status")
                .or_else(|| resp?.response_headers.get("grpc-status"))?
                .clone(),
            Attribute::ResponseHeader(h) => resp?.response_headers.get(h)?.clone(),
            Attribute::SourceAddress => ip(self.common.downstream_remote_address.as_ref())?,
            Attribute::SourcePort => port(self.common.downstream_remote_address.as_ref())?,
            Attribute::DestinationAddress => ip(self.common.downstream_local_address.as_ref())?,
            Attribute::DestinationPort => port(self.common.downstream_local_address.as_ref())?,
            Attribute::UpstreamAddress => ip(self.common.upstream_remote_address.as_ref())?,
            Attribute::UpstreamPort => port(self.common.upstream_remote_address.as_ref())?,
            Attribute::ConnectionMtls => self.mtls().to_string(),
            Attribute::ConnectionRequestedServerName => {
                text(&self.common.tls_properties.as_ref()?.tls_sni_hostname)?
            }
            Attribute::ConnectionTlsVersion => {
                match TlsVersion::try_from(self.common.tls_properties.as_ref()?.tls_version).ok()? {
                    TlsVersion::TlSv1 => "TLSv1",
                    TlsVersion::TlSv11 => "TLSv1.1",
                    TlsVersion::TlSv12 => "TLSv1.2",
                    TlsVersion::TlSv13 => "TLSv1.3",
                    TlsVersion::VersionUnspecified => return None,
                }
                .to_string()
            }
            Attribute::ConnectionUriSanPeerCertificate => {
                peer_uris(self.common).next()?.to_string()
            }
            Attribute::XdsClusterName => text(&self.common.upstream_cluster)?,
            Attribute::XdsRouteName => text(&self.common.route_name)?,
        })
    }

    /// Envoy's `connection.mtls`: the client presented a certificate that was verified.
    fn mtls(&self) -> bool {
        self.common
            .tls_properties
            .as_ref()
            .and_then(|t| t.peer_certificate_properties.as_ref())
            .is_some()
    }
}

fn ip(a: Option<&Address>) -> Option<String> {
    socket(a).map(|(ip, _)| ip.to_string())
}

fn port(a: Option<&Address>) -> Option<String> {
    socket(a)
        .map(|(_, port)| port)
        .filter(|p| *p != 0)
        .map(|p| p.to_string())
}

fn cap(mut v: String) -> String {
    if v.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v.truncate(end);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{SocketAddress, address};
    use meshd_model::telemetry_tag::parse;

    fn addr(ip: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    }

    #[test]
    fn values_come_from_the_entry() {
        let common = AccessLogCommon {
            downstream_local_address: addr("10.0.0.2", 8080),
            downstream_remote_address: addr("10.0.0.1", 40000),
            upstream_cluster: "inbound|8080||".into(),
            ..Default::default()
        };
        let entry = HttpAccessLogEntry {
            protocol_version: HttpVersion::Http11 as i32,
            request: Some(HttpRequestProperties {
                request_method: RequestMethod::Post as i32,
                authority: "api.shop:8080".into(),
                path: "/orders?id=7".into(),
                request_headers: [("x-user".to_string(), "ada".to_string())].into(),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 503 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = EntryAttributes::http(&common, &entry);
        let v = |expr: &str| a.value(&parse(expr).unwrap());
        assert_eq!(v("request.host"), "api.shop:8080");
        assert_eq!(v("request.method"), "POST");
        assert_eq!(v("request.path"), "/orders?id=7");
        assert_eq!(v("request.url_path"), "/orders");
        assert_eq!(v("request.query"), "id=7");
        assert_eq!(v("request.protocol"), "HTTP/1.1");
        assert_eq!(v("request.headers['X-User']"), "ada");
        assert_eq!(v("request.headers['x-none']"), UNKNOWN);
        assert_eq!(v("response.code"), "503");
        assert_eq!(v("string(destination.port)"), "8080");
        assert_eq!(v("source.address"), "10.0.0.1");
        assert_eq!(v("xds.cluster_name"), "inbound|8080||");
        assert_eq!(v("connection.mtls"), "false");
        assert_eq!(v("'gold'"), "gold");
        let tcp = EntryAttributes::tcp(&common);
        assert_eq!(tcp.value(&parse("request.host").unwrap()), UNKNOWN);
        assert_eq!(tcp.value(&parse("destination.port").unwrap()), "8080");
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let common = AccessLogCommon::default();
        let entry = HttpAccessLogEntry {
            request: Some(HttpRequestProperties {
                path: long,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = EntryAttributes::http(&common, &entry).value(&parse("request.path").unwrap());
        assert_eq!(v.len(), MAX_VALUE_BYTES);
        assert!(v.chars().all(|c| c == 'é'));
    }
}

//! The values a Telemetry `tagOverrides` UPSERT may give a metric label, parsed once from the
//! CEL text Istio takes. meshd computes labels from Envoy's access-log entries, not by running
//! CEL inside Envoy, so it accepts the expressions that name one entry attribute (Envoy's
//! attribute vocabulary, as Istio's docs use it), optionally wrapped in `string(…)`, and quoted
//! literals; anything else is refused at validation with the list of what is supported, rather
//! than recorded as a label that is silently always `unknown`.

/// What an upserted tag's value is computed from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TagValue {
    Literal(String),
    Attribute(Attribute),
}

/// One of Envoy's request attributes that an access-log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attribute {
    RequestHost,
    RequestMethod,
    /// Path with its query, as the client sent it.
    RequestPath,
    /// Path without its query.
    RequestUrlPath,
    RequestQuery,
    RequestScheme,
    RequestProtocol,
    RequestUserAgent,
    RequestReferer,
    RequestId,
    /// A request header, by its lower-case name.
    RequestHeader(String),
    ResponseCode,
    ResponseCodeDetails,
    ResponseGrpcStatus,
    /// A response header, by its lower-case name.
    ResponseHeader(String),
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    UpstreamAddress,
    UpstreamPort,
    ConnectionMtls,
    ConnectionRequestedServerName,
    ConnectionTlsVersion,
    ConnectionUriSanPeerCertificate,
    XdsClusterName,
    XdsRouteName,
}

/// The attributes named by a plain path, for the error message and the parser alike.
const NAMED: [(&str, Attribute); 26] = [
    ("request.host", Attribute::RequestHost),
    ("request.method", Attribute::RequestMethod),
    ("request.path", Attribute::RequestPath),
    ("request.url_path", Attribute::RequestUrlPath),
    ("request.query", Attribute::RequestQuery),
    ("request.scheme", Attribute::RequestScheme),
    ("request.protocol", Attribute::RequestProtocol),
    ("request.useragent", Attribute::RequestUserAgent),
    ("request.referer", Attribute::RequestReferer),
    ("request.id", Attribute::RequestId),
    ("response.code", Attribute::ResponseCode),
    ("response.code_details", Attribute::ResponseCodeDetails),
    ("response.grpc_status", Attribute::ResponseGrpcStatus),
    ("source.address", Attribute::SourceAddress),
    ("source.port", Attribute::SourcePort),
    ("destination.address", Attribute::DestinationAddress),
    ("destination.port", Attribute::DestinationPort),
    ("upstream.address", Attribute::UpstreamAddress),
    ("upstream.port", Attribute::UpstreamPort),
    ("connection.mtls", Attribute::ConnectionMtls),
    (
        "connection.requested_server_name",
        Attribute::ConnectionRequestedServerName,
    ),
    ("connection.tls_version", Attribute::ConnectionTlsVersion),
    (
        "connection.uri_san_peer_certificate",
        Attribute::ConnectionUriSanPeerCertificate,
    ),
    ("xds.cluster_name", Attribute::XdsClusterName),
    ("xds.route_name", Attribute::XdsRouteName),
    // Envoy's older spelling, still in Istio's examples.
    ("request.user_agent", Attribute::RequestUserAgent),
];

/// Longest literal or header name accepted: label values stay small.
const MAX_TEXT: usize = 256;

/// `'text'` or `"text"` with no escapes, or `None` when `s` is not one quoted string.
fn quoted(s: &str) -> Option<&str> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = s.strip_prefix(q)?.strip_suffix(q)?;
    (!inner.contains(q) && !inner.contains('\\')).then_some(inner)
}

/// `request.headers['x-user']` → the header name, lower-cased.
fn header(s: &str, map: &str) -> Result<Option<String>, String> {
    let Some(rest) = s.strip_prefix(map) else {
        return Ok(None);
    };
    let Some(key) = rest
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
    else {
        return Ok(None);
    };
    let name =
        quoted(key.trim()).ok_or_else(|| format!("`{s}`: the header name must be quoted"))?;
    let valid = !name.is_empty()
        && name.len() <= MAX_TEXT
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
    if !valid {
        return Err(format!("`{s}`: `{name}` is not an HTTP header name"));
    }
    Ok(Some(name.to_ascii_lowercase()))
}

fn supported() -> String {
    let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
    format!(
        "a quoted literal, string(…) of an attribute, request.headers['name'], \
         response.headers['name'], or one of {}",
        names.join(", ")
    )
}

/// Parses a tag's `value`.
pub fn parse(text: &str) -> Result<TagValue, String> {
    let mut s = text.trim();
    if let Some(inner) = s.strip_prefix("string(").and_then(|r| r.strip_suffix(')')) {
        s = inner.trim();
    }
    if let Some(lit) = quoted(s) {
        if lit.len() > MAX_TEXT {
            return Err(format!("a literal of at most {MAX_TEXT} bytes"));
        }
        return Ok(TagValue::Literal(lit.to_string()));
    }
    if let Some(name) = header(s, "request.headers")? {
        return Ok(TagValue::Attribute(Attribute::RequestHeader(name)));
    }
    if let Some(name) = header(s, "response.headers")? {
        return Ok(TagValue::Attribute(Attribute::ResponseHeader(name)));
    }
    NAMED
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, a)| TagValue::Attribute(a.clone()))
        .ok_or_else(|| {
            format!(
                "`{text}` is not an expression meshd evaluates (it computes labels from access-log entries): use {}",
                supported()
            )
        })
}

/// Whether `name` can be a Prometheus label name (and is not one of its reserved `__` ones).
pub fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
        && name.len() <= 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_examples_parse() {
        assert_eq!(
            parse("request.host"),
            Ok(TagValue::Attribute(Attribute::RequestHost))
        );
        assert_eq!(
            parse("string(destination.port)"),
            Ok(TagValue::Attribute(Attribute::DestinationPort))
        );
        assert_eq!(
            parse("request.headers['X-User-Id']"),
            Ok(TagValue::Attribute(Attribute::RequestHeader(
                "x-user-id".into()
            )))
        );
        assert_eq!(
            parse("response.headers[\"x-cache\"]"),
            Ok(TagValue::Attribute(Attribute::ResponseHeader(
                "x-cache".into()
            )))
        );
        assert_eq!(parse("'canary'"), Ok(TagValue::Literal("canary".into())));
        assert_eq!(parse(" \"v2\" "), Ok(TagValue::Literal("v2".into())));
    }

    #[test]
    fn what_meshd_cannot_compute_is_refused() {
        for bad in [
            "request.headers['x'] | 'none'",
            "has(request.headers['x']) ? request.headers['x'] : 'none'",
            "filter_state['wasm.upstream_peer']",
            "request.headers[x]",
            "request.headers['bad header']",
            "'it''s'",
            "node.metadata['NAME']",
            "",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse("unknown.attr").unwrap_err().contains("request.host"));
    }

    #[test]
    fn label_names() {
        assert!(valid_label_name("request_host"));
        assert!(valid_label_name("_x1"));
        assert!(!valid_label_name("1x"));
        assert!(!valid_label_name("a-b"));
        assert!(!valid_label_name("__name"));
        assert!(!valid_label_name(""));
    }
}

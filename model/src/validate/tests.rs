//! Hostile scalars: each out-of-range value rejects its document with the field named, and
//! none panics.

use crate::parse_file;

fn rejection(kind: &str, spec: &str) -> String {
    let group = match kind {
        "AuthorizationPolicy" | "PeerAuthentication" => "security.istio.io",
        _ => "networking.istio.io",
    };
    let text = format!(
        "apiVersion: {group}/v1\nkind: {kind}\nmetadata: {{name: x, namespace: a}}\nspec:\n{spec}"
    );
    let file = parse_file("x.yaml", &text).expect("valid YAML");
    assert!(file.objects.is_empty(), "{kind} accepted:\n{spec}");
    let [e] = &file.rejected[..] else {
        panic!("{:?}", file.rejected)
    };
    e.to_string()
}

const ROUTE: &str = "  hosts: [b]\n  http:\n  - route: [{destination: {host: b}}]\n";

#[test]
fn hostile_scalars_are_rejected_with_their_field() {
    let cases: &[(&str, String, &str)] = &[
        (
            "VirtualService",
            format!("{ROUTE}    timeout: 99999999999999999999s\n"),
            "spec.http[0].timeout: duration",
        ),
        (
            "VirtualService",
            format!("{ROUTE}    retries: {{attempts: 3, perTryTimeout: 1e400s}}\n"),
            "perTryTimeout",
        ),
        (
            "VirtualService",
            format!("{ROUTE}    timeout: 1.5.5s\n"),
            "spec.http[0].timeout",
        ),
        (
            "VirtualService",
            "  hosts: [b]\n  http:\n  - route:\n    - {destination: {host: b}, weight: 4294967295}\n    - {destination: {host: c}, weight: 101}\n".into(),
            "weights add up to 4294967396",
        ),
        (
            "VirtualService",
            "  hosts: [b]\n  http:\n  - route: [{destination: {host: b, port: {number: 70000}}}]\n".into(),
            "spec.http[0].route[0].destination.port.number: port 70000",
        ),
        (
            "VirtualService",
            "  hosts: [b]\n  tcp:\n  - route: [{destination: {host: b, port: {number: 0}}}]\n".into(),
            "spec.tcp[0].route[0].destination.port.number: port 0",
        ),
        (
            "VirtualService",
            "  hosts: [b]\n  http:\n  - redirect: {uri: /x, port: 65536}\n".into(),
            "spec.http[0].redirect.port",
        ),
        (
            "VirtualService",
            "  hosts: [b]\n  http:\n  - redirect: {uri: /x, redirectCode: 200}\n".into(),
            "redirectCode: 200",
        ),
        (
            "VirtualService",
            "  hosts: [b]\n  http:\n  - directResponse: {status: 4294967295}\n".into(),
            "spec.http[0].directResponse.status: HTTP status 4294967295",
        ),
        (
            "VirtualService",
            format!("{ROUTE}    fault: {{abort: {{httpStatus: 1000}}}}\n"),
            "spec.http[0].fault.abort.httpStatus",
        ),
        (
            "VirtualService",
            format!("{ROUTE}    fault: {{abort: {{httpStatus: 503, percentage: {{value: .nan}}}}}}\n"),
            "fault.abort.percentage",
        ),
        (
            "VirtualService",
            format!("{ROUTE}    mirror: {{host: m, port: {{number: 99999}}}}\n"),
            "spec.http[0].mirror.port.number",
        ),
        (
            "VirtualService",
            format!("{ROUTE}    match: [{{port: 4294967295}}]\n"),
            "spec.http[0].match[0].port",
        ),
        (
            "VirtualService",
            format!("{ROUTE}    match: [{{port: -1}}]\n"),
            "spec.http[0]",
        ),
        (
            "DestinationRule",
            "  host: b\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 315576000001s}}\n".into(),
            "connectTimeout: duration",
        ),
        (
            "DestinationRule",
            "  host: b\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 4294967296}}\n".into(),
            "maxConnections",
        ),
        (
            "DestinationRule",
            "  host: b\n  subsets:\n  - name: v1\n    trafficPolicy: {outlierDetection: {maxEjectionPercent: 4294967295}}\n".into(),
            "spec.subsets[0].trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        (
            "DestinationRule",
            "  host: b\n  trafficPolicy: {outlierDetection: {minHealthPercent: 101}}\n".into(),
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
        ),
        (
            "DestinationRule",
            "  host: b\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 18446744073709551615}}}\n".into(),
            "minimumRingSize",
        ),
        (
            "DestinationRule",
            "  host: b\n  trafficPolicy: {portLevelSettings: [{port: {number: 0}}]}\n".into(),
            "spec.trafficPolicy.portLevelSettings[0].port.number: port 0",
        ),
        (
            "ServiceEntry",
            "  hosts: [b]\n  ports: [{number: 80, name: http, targetPort: 65536}]\n".into(),
            "spec.ports[0].targetPort",
        ),
        (
            "ServiceEntry",
            "  hosts: [b]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, ports: {http: 0}}]\n".into(),
            "spec.endpoints[0].ports.http",
        ),
        (
            "ServiceEntry",
            "  hosts: [b]\n  addresses: [10.0.0.0/33]\n".into(),
            "spec.addresses",
        ),
        (
            "ServiceEntry",
            "  hosts: [b]\n  addresses: [\"::/129\"]\n".into(),
            "spec.addresses",
        ),
        (
            "Sidecar",
            "  egress: [{port: {number: 65536, protocol: HTTP, name: h}, hosts: [./*]}]\n".into(),
            "spec.egress[0].port",
        ),
        (
            "Sidecar",
            "  ingress: [{port: {number: 80, protocol: HTTP, name: h, targetPort: 0}, defaultEndpoint: 127.0.0.1:8080}]\n".into(),
            "spec.ingress[0].port.targetPort",
        ),
        (
            "Sidecar",
            "  ingress: [{port: {number: 80, protocol: HTTP, name: h}, defaultEndpoint: 127.0.0.1:99999}]\n".into(),
            "defaultEndpoint",
        ),
        (
            "Gateway",
            "  servers: [{port: {number: 4294967296, protocol: HTTP, name: h}, hosts: [\"*\"]}]\n".into(),
            "spec.servers[0].port.number",
        ),
    ];
    for (kind, spec, want) in cases {
        let got = rejection(kind, spec);
        assert!(got.starts_with("x.yaml:"), "{got}");
        assert!(
            got.contains(want),
            "{kind} {spec}\nwant {want:?}\n got {got}"
        );
    }
}

/// A regex that does not compile, or compiles past the size limit, is a rejection.
#[test]
fn hostile_regexes_are_rejected() {
    for re in ["(", "[z-a]", "a{1000}{1000}{1000}"] {
        let spec = format!("{ROUTE}    match: [{{uri: {{regex: '{re}'}}}}]\n");
        let got = rejection("VirtualService", &spec);
        assert!(
            got.contains("spec.http[0].match[0].uri: invalid regex"),
            "{got}"
        );
    }
}

//! Istio's documented validation rules, one table row per rule: a valid example that must be
//! accepted, and an invalid one that must be rejected with a message naming the object and the
//! field (and, from a file, the field's line).

use crate::{MeshConfig, parse_file};

#[derive(Debug)]
pub(super) enum Want {
    Accepted,
    /// Rejected; the message holds this field path and these words.
    Rejected(&'static str, &'static str),
}
pub(super) use Want::*;

fn group(kind: &str) -> &'static str {
    match kind {
        "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication" => {
            "security.istio.io"
        }
        "Telemetry" => "telemetry.istio.io",
        _ => "networking.istio.io",
    }
}

/// What meshd says about one object of `kind` with this spec (indented two spaces).
fn verdict(kind: &str, spec: &str) -> Option<String> {
    let text = format!(
        "apiVersion: {}/v1\nkind: {kind}\nmetadata: {{name: t, namespace: shop}}\nspec:\n{spec}",
        group(kind)
    );
    let file = parse_file("rule.yaml", &text).expect("valid YAML");
    let mesh = MeshConfig::assemble([&file]);
    mesh.rejected.first().map(|r| r.to_string())
}

pub(super) fn check(rows: &[(&str, &str, Want)]) {
    for (kind, spec, want) in rows {
        let got = verdict(kind, spec);
        match (want, &got) {
            (Accepted, None) => {}
            (Rejected(field, words), Some(msg)) => {
                let named = format!("{kind} shop/t: ");
                assert!(msg.starts_with("rule.yaml:"), "{msg}");
                assert!(msg.contains(&named), "object not named: {msg}");
                assert!(msg.contains(field), "field {field:?} not named: {msg}");
                assert!(msg.contains(words), "{words:?} not said: {msg}");
            }
            _ => panic!("{kind}\n{spec}\nwant {want:?}, got {got:?}"),
        }
    }
}

const SE_PORT: &str = "  ports: [{number: 80, name: http, protocol: HTTP}]\n";

#[test]
fn service_entry_rules() {
    let se = |body: &str| format!("{body}{SE_PORT}");
    check(&[
        // A host of `*` alone.
        (
            "ServiceEntry",
            &se("  hosts: [\"*.example.com\"]\n"),
            Accepted,
        ),
        (
            "ServiceEntry",
            &se("  hosts: [\"*\"]\n"),
            Rejected("spec.hosts[0]", "wildcard"),
        ),
        // CIDR addresses only with NONE or STATIC.
        (
            "ServiceEntry",
            &se("  hosts: [a.example.com]\n  addresses: [10.1.0.0/16]\n  resolution: NONE\n"),
            Accepted,
        ),
        (
            "ServiceEntry",
            &se("  hosts: [a.example.com]\n  addresses: [10.1.0.0/16]\n  resolution: DNS\n"),
            Rejected("spec.addresses[0]", "CIDR"),
        ),
        (
            "ServiceEntry",
            &se("  hosts: [a.example.com]\n  addresses: [\"unix:///run/a.sock\"]\n"),
            Rejected("spec.addresses[0]", "unix socket"),
        ),
        // Port numbers are unique.
        (
            "ServiceEntry",
            "  hosts: [a.example.com]\n  ports:\n  - {number: 80, name: http}\n  - {number: 81, name: http-alt}\n",
            Accepted,
        ),
        (
            "ServiceEntry",
            "  hosts: [a.example.com]\n  ports:\n  - {number: 80, name: http}\n  - {number: 80, name: http-alt}\n",
            Rejected("spec.ports[1].number", "given twice"),
        ),
        // targetPort in 1-65535.
        (
            "ServiceEntry",
            "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, targetPort: 8080}]\n",
            Accepted,
        ),
        (
            "ServiceEntry",
            "  hosts: [a.example.com]\n  ports: [{number: 80, name: http, targetPort: 65536}]\n",
            Rejected("spec.ports[0].targetPort", "out of range"),
        ),
        // NONE has no endpoints.
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n",
            ),
            Accepted,
        ),
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: NONE\n  endpoints: [{address: 10.0.0.1}]\n",
            ),
            Rejected("spec.endpoints", "NONE"),
        ),
        // DNS_ROUND_ROBIN has at most one endpoint.
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: a.example.com}]\n",
            ),
            Accepted,
        ),
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: a.example.com}, {address: b.example.com}]\n",
            ),
            Rejected("spec.endpoints", "DNS_ROUND_ROBIN"),
        ),
        // A domain name needs DNS resolution.
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: DNS\n  endpoints: [{address: db.example.com}]\n",
            ),
            Accepted,
        ),
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: STATIC\n  endpoints: [{address: db.example.com}]\n",
            ),
            Rejected("spec.endpoints[0].address", "DNS"),
        ),
        // Unix socket endpoints: no DNS resolution.
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: DNS\n  endpoints: [{address: \"unix:///run/a.sock\"}]\n",
            ),
            Rejected("spec.resolution", "unix socket"),
        ),
        // Endpoint port names and numbers.
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, ports: {http: 8080}}]\n",
            ),
            Accepted,
        ),
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, ports: {\"-http\": 8080}}]\n",
            ),
            Rejected("spec.endpoints[0].ports.-http", "not a valid port name"),
        ),
        (
            "ServiceEntry",
            &se(
                "  hosts: [a.example.com]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, ports: {http: 0}}]\n",
            ),
            Rejected("spec.endpoints[0].ports.http", "out of range"),
        ),
        // Selectors match labels exactly.
        (
            "ServiceEntry",
            &se("  hosts: [a.example.com]\n  workloadSelector: {labels: {app: \"web*\"}}\n"),
            Rejected("spec.workloadSelector.labels.app", "wildcard"),
        ),
    ]);
}

#[test]
fn workload_entry_rules() {
    check(&[
        (
            "WorkloadEntry",
            "  address: 10.0.0.1\n  ports: {http: 8080, grpc-web: 9090}\n",
            Accepted,
        ),
        ("WorkloadEntry", "  address: vm.example.com\n", Accepted),
        // Port names.
        (
            "WorkloadEntry",
            "  address: 10.0.0.1\n  ports: {http_1: 8080}\n",
            Rejected("spec.ports.http_1", "not a valid port name"),
        ),
        (
            "WorkloadEntry",
            "  address: 10.0.0.1\n  ports: {http: 70000}\n",
            Rejected("spec.ports.http", "out of range"),
        ),
        // An address, unless a network is named.
        (
            "WorkloadEntry",
            "  labels: {app: a}\n",
            Rejected("spec.address", "required"),
        ),
        // Unix socket rules.
        (
            "WorkloadEntry",
            "  address: \"unix://run/a.sock\"\n",
            Rejected("spec.address", "absolute path"),
        ),
        (
            "WorkloadEntry",
            "  address: \"unix:///run/\"\n",
            Rejected("spec.address", "directory"),
        ),
        (
            "WorkloadEntry",
            "  address: \"unix:///run/a.sock\"\n  ports: {http: 80}\n",
            Rejected("spec.ports", "may not have ports"),
        ),
    ]);
}

/// Valid Istio that meshd cannot serve is refused with a message saying exactly that, not with
/// Istio's word for invalid.
#[test]
fn valid_istio_meshd_cannot_serve_says_so() {
    check(&[(
        "WorkloadEntry",
        "  network: vpc-2\n",
        Rejected(
            "spec.address",
            "valid Istio, but meshd does not route between networks",
        ),
    )]);
    // Unix socket endpoints are served (Envoy pipe addresses).
    check(&[
        (
            "WorkloadEntry",
            "  address: \"unix:///run/a.sock\"\n",
            Accepted,
        ),
        (
            "WorkloadEntry",
            "  address: \"unix://@abstract\"\n",
            Accepted,
        ),
    ]);
}

const SELECTOR: &str = "  selector: {matchLabels: {app: web}}\n";

#[test]
fn peer_authentication_rules() {
    let pa = |body: &str| format!("{SELECTOR}{body}");
    check(&[
        (
            "PeerAuthentication",
            &pa("  portLevelMtls: {8080: {mode: DISABLE}}\n"),
            Accepted,
        ),
        (
            "PeerAuthentication",
            &pa("  portLevelMtls: {\"8080\": {mode: DISABLE}}\n"),
            Accepted,
        ),
        ("PeerAuthentication", "  mtls: {mode: STRICT}\n", Accepted),
        // Not empty.
        (
            "PeerAuthentication",
            &pa("  portLevelMtls: {}\n"),
            Rejected("spec.portLevelMtls", "empty"),
        ),
        // Ports in 1-65535.
        (
            "PeerAuthentication",
            &pa("  portLevelMtls: {0: {mode: DISABLE}}\n"),
            Rejected("spec.portLevelMtls.0", "out of range"),
        ),
        (
            "PeerAuthentication",
            &pa("  portLevelMtls: {\"65536\": {mode: DISABLE}}\n"),
            Rejected("spec.portLevelMtls.65536", "out of range"),
        ),
        (
            "PeerAuthentication",
            &pa("  portLevelMtls: {http: {mode: DISABLE}}\n"),
            Rejected("spec.portLevelMtls", "`http` is not a port number"),
        ),
        // Only with a selector that names labels.
        (
            "PeerAuthentication",
            "  portLevelMtls: {8080: {mode: DISABLE}}\n",
            Rejected("spec.portLevelMtls", "selector"),
        ),
        (
            "PeerAuthentication",
            "  selector: {matchLabels: {}}\n  portLevelMtls: {8080: {mode: DISABLE}}\n",
            Rejected("spec.portLevelMtls", "selector"),
        ),
        (
            "PeerAuthentication",
            "  selector: {matchLabels: {\"app*\": web}}\n",
            Rejected("spec.selector.matchLabels.app*", "wildcard"),
        ),
    ]);
}

#[test]
fn destination_rule_load_balancer_rules() {
    let lb = |body: &str| format!("  host: cart\n  trafficPolicy:\n    loadBalancer: {body}\n");
    check(&[
        (
            "DestinationRule",
            &lb("{warmup: {duration: 60s, minimumPercent: 10, aggression: 1.5}}"),
            Accepted,
        ),
        (
            "DestinationRule",
            &lb("{simple: ROUND_ROBIN, warmupDurationSecs: 60s}"),
            Accepted,
        ),
        (
            "DestinationRule",
            &lb("{warmup: {minimumPercent: 10}}"),
            Rejected(
                "spec.trafficPolicy.loadBalancer.warmup.duration",
                "required",
            ),
        ),
        (
            "DestinationRule",
            &lb("{warmup: {duration: 60s, minimumPercent: 150}}"),
            Rejected("loadBalancer.warmup.minimumPercent", "0-100"),
        ),
        (
            "DestinationRule",
            &lb("{warmup: {duration: 60s, aggression: 0}}"),
            Rejected("loadBalancer.warmup.aggression", "more than 0"),
        ),
        (
            "DestinationRule",
            &lb("{localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}"),
            Accepted,
        ),
        (
            "DestinationRule",
            &lb(
                "{localityLbSetting: {distribute: [{from: \"us-west/*\", to: {\"us-west/*\": 90}}]}}",
            ),
            Rejected("loadBalancer.localityLbSetting.distribute[0].to", "100"),
        ),
        (
            "DestinationRule",
            &lb(
                "{localityLbSetting: {distribute: [{from: \"*\", to: {\"*\": 100}}], failover: [{from: a, to: b}]}}",
            ),
            Rejected("loadBalancer.localityLbSetting", "only one"),
        ),
        (
            "DestinationRule",
            &lb(
                "{localityLbSetting: {distribute: [{from: \"r1/z1/*\", to: {\"r1/z1/*\": 80, \"r2/*\": 20}}]}}",
            ),
            Accepted,
        ),
        (
            "DestinationRule",
            &lb("{localityLbSetting: {distribute: [{from: \"*/z1\", to: {\"*\": 100}}]}}"),
            Rejected(
                "loadBalancer.localityLbSetting.distribute[0].from",
                "not a locality",
            ),
        ),
        (
            "DestinationRule",
            &lb("{localityLbSetting: {distribute: [{from: \"r1/z1/s1/x\", to: {\"*\": 100}}]}}"),
            Rejected(
                "loadBalancer.localityLbSetting.distribute[0].from",
                "region/zone/subzone",
            ),
        ),
        (
            "DestinationRule",
            &lb("{localityLbSetting: {distribute: [{from: \"*\", to: {\"r1/z*\": 100}}]}}"),
            Rejected(
                "loadBalancer.localityLbSetting.distribute[0].to",
                "not a locality",
            ),
        ),
        (
            "DestinationRule",
            &lb(
                "{localityLbSetting: {distribute: [{from: \"*\", to: {\"r1/*\": 0, \"r2/*\": 100}}]}}",
            ),
            Rejected(
                "loadBalancer.localityLbSetting.distribute[0].to",
                "more than 0",
            ),
        ),
        (
            "DestinationRule",
            &lb("{localityLbSetting: {failover: [{from: r1/z1, to: r2}]}}"),
            Rejected(
                "loadBalancer.localityLbSetting.failover[0].from",
                "must be a region",
            ),
        ),
        (
            "DestinationRule",
            &lb("{localityLbSetting: {failover: [{from: r1, to: r1}]}}"),
            Rejected("loadBalancer.localityLbSetting.failover[0]", "to itself"),
        ),
        (
            "DestinationRule",
            &lb(
                "{localityLbSetting: {failoverPriority: [topology.kubernetes.io/region, \"version=v1\"]}}",
            ),
            Accepted,
        ),
        (
            "DestinationRule",
            &lb("{localityLbSetting: {failoverPriority: [\"=v1\"]}}"),
            Rejected(
                "loadBalancer.localityLbSetting.failoverPriority[0]",
                "names no label",
            ),
        ),
    ]);
}

/// ClientTLSSettings `credentialName`: only one of it and the certificate files (Istio's rule);
/// with SIMPLE it is the CA, which insecureSkipVerify would drop.
#[test]
fn destination_rule_credential_name_rules() {
    let tls = |t: &str| format!("  host: cart\n  trafficPolicy:\n    tls: {t}\n");
    check(&[
        (
            "DestinationRule",
            &tls("{mode: MUTUAL, credentialName: client}"),
            Accepted,
        ),
        (
            "DestinationRule",
            &tls(
                "{mode: SIMPLE, credentialName: client, sni: cart.example, subjectAltNames: [cart.example]}",
            ),
            Accepted,
        ),
        (
            "DestinationRule",
            &tls("{mode: MUTUAL, credentialName: client, caCertificates: /ca.pem}"),
            Rejected("spec.trafficPolicy.tls", "either credentialName"),
        ),
        (
            "DestinationRule",
            &tls(
                "{mode: MUTUAL, credentialName: client, clientCertificate: /c.pem, privateKey: /k.pem}",
            ),
            Rejected("spec.trafficPolicy.tls", "not both"),
        ),
        (
            "DestinationRule",
            &tls("{mode: SIMPLE, credentialName: client, insecureSkipVerify: true}"),
            Rejected("spec.trafficPolicy.tls", "insecureSkipVerify"),
        ),
        (
            "DestinationRule",
            "  host: cart\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: MUTUAL, credentialName: c, privateKey: /k.pem}\n",
            Rejected(
                "spec.trafficPolicy.portLevelSettings[0].tls",
                "either credentialName",
            ),
        ),
    ]);
}

/// `workloadSelector` (Istio's `WorkloadSelector`, `matchLabels`): exact labels, no wildcard, no
/// empty key; the networking spelling `labels` is not DestinationRule's.
#[test]
fn destination_rule_workload_selector_rules() {
    let dr = |sel: &str| {
        format!(
            "  host: cart
  workloadSelector: {sel}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
"
        )
    };
    check(&[
        (
            "DestinationRule",
            &dr("{matchLabels: {app: web}}"),
            Accepted,
        ),
        ("DestinationRule", &dr("{matchLabels: {}}"), Accepted),
        (
            "DestinationRule",
            &dr("{matchLabels: {app: \"web*\"}}"),
            Rejected("spec.workloadSelector.matchLabels.app", "wildcard"),
        ),
        (
            "DestinationRule",
            &dr("{matchLabels: {\"\": web}}"),
            Rejected("spec.workloadSelector.matchLabels", "must not be empty"),
        ),
        (
            "DestinationRule",
            &dr("{labels: {app: web}}"),
            Rejected("spec.workloadSelector", "unknown field `labels`"),
        ),
    ]);
}

#[test]
fn authorization_policy_service_accounts() {
    let from = |source: &str| format!("{SELECTOR}  rules:\n  - from:\n    - source: {source}\n");
    const AT: &str = "spec.rules[0].from[0].source";
    check(&[
        (
            "AuthorizationPolicy",
            &from("{serviceAccounts: [shop/web, ops/admin]}"),
            Accepted,
        ),
        (
            "AuthorizationPolicy",
            &from("{notServiceAccounts: [shop/web]}"),
            Accepted,
        ),
        (
            "AuthorizationPolicy",
            &from("{serviceAccounts: [web]}"),
            Rejected(
                "spec.rules[0].from[0].source.serviceAccounts",
                "namespace/serviceaccount",
            ),
        ),
        (
            "AuthorizationPolicy",
            &from("{notServiceAccounts: [\"shop/*\"]}"),
            Rejected(
                "spec.rules[0].from[0].source.notServiceAccounts",
                "no wildcard",
            ),
        ),
        (
            "AuthorizationPolicy",
            &from("{serviceAccounts: [shop/web], principals: [cluster.local/ns/shop/sa/web]}"),
            Rejected(AT, "cannot be set together"),
        ),
        (
            "AuthorizationPolicy",
            "  selector: {matchLabels: {app: \"*\"}}\n",
            Rejected("spec.selector.matchLabels.app", "wildcard"),
        ),
    ]);
}

/// From a file, a rule's message carries the line of the field it names.
#[test]
fn a_rule_violation_points_at_its_line() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: t, namespace: shop}
spec:
  hosts: [a.example.com]
  ports:
  - {number: 80, name: http}
  - {number: 80, name: http-alt}
";
    let file = parse_file("se.yaml", text).unwrap();
    let [e] = &file.rejected[..] else {
        panic!("{:?}", file.rejected)
    };
    assert_eq!(e.line, 8, "{e}");
}

/// L4 matches' `destinationSubnets`: IP addresses or CIDRs, on tcp and tls routes alike.
#[test]
fn virtual_service_destination_subnets() {
    let tcp = |subnets: &str| {
        format!(
            "  hosts: [db]\n  tcp:\n  - match: [{{destinationSubnets: {subnets}}}]\n    route: [{{destination: {{host: db}}}}]\n"
        )
    };
    let tls = |subnets: &str| {
        format!(
            "  hosts: [db]\n  tls:\n  - match: [{{sniHosts: [db], destinationSubnets: {subnets}}}]\n    route: [{{destination: {{host: db}}}}]\n"
        )
    };
    check(&[
        ("VirtualService", &tcp("[10.0.1.0/24, 10.0.2.7]"), Accepted),
        ("VirtualService", &tcp("[\"2001:db8::/64\"]"), Accepted),
        ("VirtualService", &tls("[10.0.1.0/24]"), Accepted),
        (
            "VirtualService",
            &tcp("[10.0.1.0/24, 10.0.1.0/33]"),
            Rejected(
                "spec.tcp[0].match[0].destinationSubnets[1]",
                "`10.0.1.0/33` is not an IP address or CIDR",
            ),
        ),
        (
            "VirtualService",
            &tls("[db.example]"),
            Rejected(
                "spec.tls[0].match[0].destinationSubnets[0]",
                "is not an IP address or CIDR",
            ),
        ),
    ]);
}

/// `caCrl` (DestinationRule and Gateway TLS): a CRL file checked with the `caCertificates` file;
/// a credential's CRL is its Secret's `ca.crl` key.
#[test]
fn ca_crl_rules() {
    let dr = |t: &str| format!("  host: cart\n  trafficPolicy:\n    tls: {t}\n");
    let gw = |t: &str| {
        format!(
            "  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: ['*']\n    tls: {t}\n"
        )
    };
    check(&[
        (
            "DestinationRule",
            &dr("{mode: SIMPLE, caCertificates: /ca.pem, caCrl: /ca.crl}"),
            Accepted,
        ),
        (
            "DestinationRule",
            &dr("{mode: SIMPLE, caCrl: /ca.crl}"),
            Rejected(
                "spec.trafficPolicy.tls.caCrl",
                "checked with caCertificates",
            ),
        ),
        (
            "DestinationRule",
            &dr("{mode: MUTUAL, credentialName: client, caCrl: /ca.crl}"),
            Rejected("spec.trafficPolicy.tls.caCrl", "the Secret's `ca.crl` key"),
        ),
        (
            "Gateway",
            &gw(
                "{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, caCrl: /ca.crl}",
            ),
            Accepted,
        ),
        (
            "Gateway",
            &gw("{mode: MUTUAL, credentialName: edge, caCrl: /ca.crl}"),
            Rejected("spec.servers[0].tls.caCrl", "the Secret's `ca.crl` key"),
        ),
    ]);
}

/// `targetRefs` (Istio 1.22+) attach to Kubernetes Gateway API gateways and waypoints, which meshd
/// does not serve: every kind says so the same way and names the selector to use instead.
#[test]
fn target_refs_say_what_meshd_does_not_serve() {
    let refs = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: edge}]\n";
    let rows: Vec<(&str, String, &str)> = vec![
        ("AuthorizationPolicy", refs.to_string(), "`selector`"),
        ("RequestAuthentication", refs.to_string(), "`selector`"),
        ("Telemetry", refs.to_string(), "`selector`"),
        (
            "EnvoyFilter",
            format!(
                "{refs}  configPatches: [{{applyTo: CLUSTER, match: {{context: ANY}}, patch: {{operation: MERGE, value: {{}}}}}}]\n"
            ),
            "`workloadSelector`",
        ),
    ];
    for (kind, spec, selector) in &rows {
        check(&[(
            kind,
            spec,
            Rejected(
                "spec.targetRefs",
                "valid Istio, but it attaches to Kubernetes Gateway API gateways and waypoints",
            ),
        )]);
        let msg = verdict(kind, spec).unwrap();
        assert!(msg.contains(selector), "{msg}");
    }
}

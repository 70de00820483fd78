//! Istio's Sidecar rules, one row per rule: a valid example accepted and an invalid one
//! rejected naming the field.

use super::parity_tests::{Want::*, check};

const HTTP_PORT: &str = "{number: 9080, protocol: HTTP, name: http}";

#[test]
fn sidecar_ingress_rules() {
    let ingress = |extra: &str| format!("  ingress:\n  - port: {HTTP_PORT}\n{extra}");
    check(&[
        (
            "Sidecar",
            &ingress("    defaultEndpoint: 127.0.0.1:8080\n"),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress("    defaultEndpoint: \"[::1]:8080\"\n"),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress("    defaultEndpoint: 10.0.0.1:8080\n"),
            Rejected("spec.ingress[0].defaultEndpoint", "127.0.0.1:PORT"),
        ),
        (
            "Sidecar",
            &ingress("    defaultEndpoint: \"unix://relative.sock\"\n"),
            Rejected("spec.ingress[0].defaultEndpoint", "not a unix socket"),
        ),
        // One listener per port.
        (
            "Sidecar",
            &format!("  ingress:\n  - port: {HTTP_PORT}\n  - port: {HTTP_PORT}\n"),
            Rejected("spec.ingress[1].port", "more than one ingress listener"),
        ),
        (
            "Sidecar",
            &ingress("    bind: localhost\n"),
            Rejected("spec.ingress[0].bind", "not an IP address"),
        ),
        // Port names and protocols are optional on a Sidecar port, the number is not.
        (
            "Sidecar",
            "  ingress:\n  - port: {number: 9080}\n    defaultEndpoint: 127.0.0.1:8080\n",
            Accepted,
        ),
        (
            "Sidecar",
            "  ingress:\n  - port: {number: 0}\n",
            Rejected("spec.ingress[0].port", "out of range"),
        ),
        // TLS a sidecar terminates: SIMPLE or MUTUAL with files.
        (
            "Sidecar",
            &ingress("    tls: {mode: ISTIO_MUTUAL}\n"),
            Rejected("spec.ingress[0].tls.mode", "SIMPLE or MUTUAL"),
        ),
        (
            "Sidecar",
            &ingress("    tls: {mode: SIMPLE, credentialName: cert}\n"),
            Rejected("spec.ingress[0].tls.credentialName", "files"),
        ),
        (
            "Sidecar",
            &ingress("    tls: {mode: SIMPLE, privateKey: /k.pem}\n"),
            Rejected("spec.ingress[0].tls", "serverCertificate and privateKey"),
        ),
        (
            "Sidecar",
            &ingress("    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}\n"),
            Rejected("spec.ingress[0].tls", "caCertificates"),
        ),
        (
            "Sidecar",
            &ingress(
                "    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, httpsRedirect: true}\n",
            ),
            Rejected("spec.ingress[0].tls.httpsRedirect", "Gateway"),
        ),
        // Served: limits of the inbound clusters, a unix-socket app, the sidecar's own TLS, a
        // bound listener under captureMode NONE.
        (
            "Sidecar",
            &format!(
                "  inboundConnectionPool: {{tcp: {{maxConnections: 10}}}}\n{}",
                ingress("    connectionPool: {http: {http1MaxPendingRequests: 5}}\n")
            ),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress("    defaultEndpoint: unix:///var/run/app.sock\n"),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress("    defaultEndpoint: unix://@app\n"),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress("    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}\n"),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress(
                "    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, subjectAltNames: [client], minProtocolVersion: TLSV1_2}\n",
            ),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress(
                "    captureMode: NONE\n    bind: 10.0.0.5\n    defaultEndpoint: 127.0.0.1:8080\n",
            ),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress("    captureMode: IPTABLES\n    bind: 0.0.0.0\n"),
            Accepted,
        ),
        (
            "Sidecar",
            &ingress("    connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}\n"),
            Rejected(
                "spec.ingress[0].connectionPool.http.h2UpgradePolicy",
                "SOMETIMES",
            ),
        ),
    ]);
}

#[test]
fn sidecar_egress_rules() {
    check(&[
        (
            "Sidecar",
            "  egress:\n  - hosts: [./*, istio-system/*]\n",
            Accepted,
        ),
        (
            "Sidecar",
            "  egress:\n  - hosts: []\n",
            Rejected("spec.egress[0].hosts", "at least one"),
        ),
        (
            "Sidecar",
            "  egress:\n  - hosts: [reviews]\n",
            Rejected("spec.egress[0].hosts", "namespace/host"),
        ),
        // A port-less listener takes every other port, so it comes last.
        (
            "Sidecar",
            &format!("  egress:\n  - port: {HTTP_PORT}\n    hosts: [./*]\n  - hosts: [./*]\n"),
            Accepted,
        ),
        (
            "Sidecar",
            &format!("  egress:\n  - hosts: [./*]\n  - port: {HTTP_PORT}\n    hosts: [./*]\n"),
            Rejected("spec.egress[0]", "only the last egress listener"),
        ),
        (
            "Sidecar",
            &format!(
                "  egress:\n  - port: {HTTP_PORT}\n    hosts: [./*]\n  - port: {HTTP_PORT}\n    hosts: [ns2/*]\n"
            ),
            Rejected("spec.egress[1].port", "more than one egress listener"),
        ),
        // Listeners with their own address: one per (address, port).
        (
            "Sidecar",
            &format!(
                "  egress:\n  - port: {HTTP_PORT}\n    bind: 127.0.0.2\n    captureMode: NONE\n    hosts: [./*]\n  - port: {HTTP_PORT}\n    bind: 127.0.0.3\n    captureMode: NONE\n    hosts: [ns2/*]\n  - hosts: [./*]\n"
            ),
            Accepted,
        ),
        (
            "Sidecar",
            &format!(
                "  egress:\n  - port: {HTTP_PORT}\n    captureMode: NONE\n    hosts: [./*]\n  - port: {HTTP_PORT}\n    bind: 127.0.0.1\n    hosts: [ns2/*]\n"
            ),
            Rejected("spec.egress[1].port", "bound to 127.0.0.1"),
        ),
        (
            "Sidecar",
            "  egress:\n  - bind: 127.0.0.1\n    hosts: [./*]\n",
            Rejected("spec.egress[0].port", "bind or captureMode NONE"),
        ),
        (
            "Sidecar",
            "  egress:\n  - captureMode: NONE\n    hosts: [./*]\n",
            Rejected("spec.egress[0].port", "bind or captureMode NONE"),
        ),
        (
            "Sidecar",
            &format!("  egress:\n  - port: {HTTP_PORT}\n    bind: my-host\n    hosts: [./*]\n"),
            Rejected("spec.egress[0].bind", "not an IP address"),
        ),
        // A unix socket: port number 0 (Istio's spelling) with a protocol, never captured.
        (
            "Sidecar",
            "  egress:\n  - port: {number: 0, protocol: HTTP, name: http}\n    bind: unix:///var/run/web.sock\n    hosts: [./*]\n",
            Accepted,
        ),
        (
            "Sidecar",
            "  egress:\n  - port: {number: 80, protocol: HTTP, name: http}\n    bind: unix:///var/run/web.sock\n    hosts: [./*]\n",
            Rejected("spec.egress[0].port.number", "port number 0"),
        ),
        (
            "Sidecar",
            "  egress:\n  - port: {number: 0}\n    bind: unix:///var/run/web.sock\n    hosts: [./*]\n",
            Rejected("spec.egress[0].port.protocol", "names its protocol"),
        ),
        (
            "Sidecar",
            "  egress:\n  - port: {number: 0, protocol: TCP}\n    bind: unix://relative.sock\n    hosts: [./*]\n",
            Rejected("spec.egress[0].bind", "not a unix socket"),
        ),
        (
            "Sidecar",
            "  egress:\n  - port: {number: 0, protocol: TCP}\n    bind: unix:///a.sock\n    captureMode: IPTABLES\n    hosts: [./*]\n",
            Rejected("spec.egress[0].captureMode", "IPTABLES"),
        ),
        (
            "Sidecar",
            "  egress:\n  - port: {number: 0, protocol: TCP}\n    bind: unix:///a.sock\n    hosts: [./*]\n  - port: {number: 0, protocol: HTTP}\n    bind: unix:///a.sock\n    hosts: [./*]\n",
            Rejected(
                "spec.egress[1].port",
                "more than one egress listener bound to unix:///a.sock",
            ),
        ),
        (
            "Sidecar",
            "  egress:\n  - hosts: [./*]\n    captureMode: SOMETIMES\n",
            Rejected("spec.egress[0].captureMode", "SOMETIMES"),
        ),
    ]);
}

#[test]
fn sidecar_egress_proxy_rules() {
    let policy =
        |body: &str| format!("  egress:\n  - hosts: [./*]\n  outboundTrafficPolicy:\n{body}");
    check(&[
        (
            "Sidecar",
            &policy(
                "    mode: REGISTRY_ONLY\n    egressProxy: {host: egress.example.com, port: {number: 443}}\n",
            ),
            Rejected("spec.outboundTrafficPolicy.egressProxy", "REGISTRY_ONLY"),
        ),
        (
            "Sidecar",
            &policy("    mode: ALLOW_ANY\n    egressProxy: {host: egress.example.com}\n"),
            Rejected("spec.outboundTrafficPolicy.egressProxy.port", "required"),
        ),
        (
            "Sidecar",
            &policy(
                "    mode: ALLOW_ANY\n    egressProxy: {host: \"*.example.com\", port: {number: 443}}\n",
            ),
            Rejected("spec.outboundTrafficPolicy.egressProxy.host", "no wildcard"),
        ),
    ]);
}

//! Gateway server TLS modes: for each rule a server meshd accepts and one it refuses, the
//! refusal naming the server's field.

use crate::parse_file;

/// The rejection of a Gateway with one server (`None` when it is accepted).
fn rejection(protocol: &str, tls: &str) -> Option<String> {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: a}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: p, protocol: {protocol}}}\n    hosts: ['*']\n    tls: {tls}\n"
    );
    let file = parse_file("gw.yaml", &text).expect("valid YAML");
    match &file.rejected[..] {
        [] => None,
        [e] => Some(e.to_string()),
        more => panic!("{more:?}"),
    }
}

#[test]
fn server_tls_modes() {
    let files = "serverCertificate: /c.pem, privateKey: /k.pem";
    // (rule, accepted (protocol, tls), refused (protocol, tls), what the refusal says)
    let table = [
        (
            "OPTIONAL_MUTUAL verifies clients with caCertificates",
            (
                "HTTPS",
                format!("{{mode: OPTIONAL_MUTUAL, {files}, caCertificates: /ca.pem}}"),
            ),
            ("HTTPS", format!("{{mode: OPTIONAL_MUTUAL, {files}}}")),
            "spec.servers[0].tls: mode OPTIONAL_MUTUAL needs caCertificates",
        ),
        (
            "OPTIONAL_MUTUAL takes its CA from credentialName",
            (
                "HTTPS",
                "{mode: OPTIONAL_MUTUAL, credentialName: c}".to_string(),
            ),
            (
                "HTTPS",
                "{mode: OPTIONAL_MUTUAL, caCertificates: /ca.pem}".to_string(),
            ),
            "spec.servers[0].tls: mode OPTIONAL_MUTUAL needs credentialName, or serverCertificate",
        ),
        (
            "a TLS server terminates TLS (then routes TCP); a TCP server does not",
            (
                "TLS",
                format!("{{mode: OPTIONAL_MUTUAL, {files}, caCertificates: /ca.pem}}"),
            ),
            (
                "TCP",
                format!("{{mode: OPTIONAL_MUTUAL, {files}, caCertificates: /ca.pem}}"),
            ),
            "spec.servers[0].tls: mode OPTIONAL_MUTUAL on a TCP server",
        ),
        (
            "ISTIO_MUTUAL on a TLS server, not on TCP",
            ("TLS", "{mode: ISTIO_MUTUAL}".to_string()),
            ("TCP", "{mode: ISTIO_MUTUAL}".to_string()),
            "spec.servers[0].tls: ISTIO_MUTUAL on a TCP server",
        ),
        (
            "a TLS server names its mode",
            ("TLS", format!("{{mode: SIMPLE, {files}}}")),
            ("TLS", "{minProtocolVersion: TLSV1_2}".to_string()),
            "spec.servers[0]: a TLS server needs tls.mode",
        ),
        (
            "MUTUAL as before",
            (
                "HTTPS",
                format!("{{mode: MUTUAL, {files}, caCertificates: /ca.pem}}"),
            ),
            ("HTTPS", format!("{{mode: MUTUAL, {files}}}")),
            "spec.servers[0].tls: mode MUTUAL needs caCertificates",
        ),
        (
            "AUTO_PASSTHROUGH routes TLS by SNI",
            ("TLS", "{mode: AUTO_PASSTHROUGH}".to_string()),
            ("HTTPS", "{mode: AUTO_PASSTHROUGH}".to_string()),
            "spec.servers[0].tls: AUTO_PASSTHROUGH needs protocol TLS",
        ),
        (
            "modes meshd does not serve are named",
            ("TLS", "{mode: PASSTHROUGH}".to_string()),
            ("TLS", "{mode: PASSTHRU}".to_string()),
            "spec.servers[0].tls.mode PASSTHRU is not supported (SIMPLE, MUTUAL, OPTIONAL_MUTUAL,",
        ),
    ];
    for (rule, (p_ok, ok), (p_bad, bad), says) in table {
        assert_eq!(rejection(p_ok, &ok), None, "{rule}: {p_ok} {ok}");
        let got = rejection(p_bad, &bad).unwrap_or_else(|| panic!("{rule}: {bad} accepted"));
        assert!(
            got.contains(says),
            "{rule}: {p_bad} {bad}\nwant {says}\n got {got}"
        );
    }
}

#[test]
fn server_bind() {
    let gateway = |bind: &str| {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: a}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n    bind: {bind}\n"
        );
        let file = parse_file("gw.yaml", &text).expect("valid YAML");
        file.rejected.first().map(|e| e.to_string())
    };
    assert_eq!(gateway("127.0.0.1"), None);
    assert_eq!(gateway("'::1'"), None);
    let bad = gateway("localhost").expect("a host name is refused");
    assert!(
        bad.contains("spec.servers[0].bind: `localhost` is not an IP address"),
        "{bad}"
    );
    assert_eq!(gateway("unix:///var/run/gw.sock"), None);
    assert_eq!(gateway("unix://@gw"), None);
    let uds = gateway("unix://gw.sock").expect("a relative socket path is refused");
    assert!(
        uds.contains("spec.servers[0].bind: `unix://gw.sock` is not a unix socket"),
        "{uds}"
    );
}

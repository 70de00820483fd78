//! AuthorizationPolicy semantics through real Envoy: DENY wins over ALLOW, `spec: {}` denies all
//! and `rules: [{}]` allows all, a dry-run policy is counted but not enforced, a selector touches
//! only the workloads it matches while namespace and mesh-wide (root namespace) policies cover
//! every workload, a path template (`{*}`) matches exactly one segment, a policy with an
//! unsupported or invalid field denies and is reported, TCP ports get the network RBAC filter,
//! AUDIT never blocks and marks what it matched in the access log.

use crate::authz_support;

use authz_support::cases::{Client, Port, Probe};
use authz_support::*;
use meshd_e2e::*;
use std::time::Duration;

const RBAC_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

fn get(client: Client, path: &'static str) -> Probe {
    Probe {
        client,
        port: Port::Main,
        method: "GET",
        path,
        headers: &[],
        by_vip: false,
    }
}

fn to_other(w: &World, client: Client) -> String {
    let pod = w.client(client);
    outcome(&pod.request("GET", &format!("http://{OTHER}:{MAIN}/"), &[], None))
}

fn check(what: &str, want: String, f: impl FnMut() -> String) {
    expect(what, &want, f).unwrap();
}

#[test]
fn policy_semantics_through_envoy() {
    let w = World::start(
        "azsem",
        Options {
            mtls: "STRICT",
            other: true,
            plain: false,
        },
    );
    let a = get(Client::A, "/");
    let b = get(Client::B, "/");
    let a_admin = get(Client::A, "/admin/users");
    check("no policy: A", allowed(), || outcome(&w.probe(&a)));
    check("no policy: B", allowed(), || outcome(&w.probe(&b)));

    // `spec: {}` on the server: everything to it is denied, `other` is untouched.
    // (An ALLOW filter without policies names none: wait for the filter itself.)
    w.apply("p.yaml", &server_policy("deny-all", ""), RBAC_FILTER, true);
    check("spec {}: A", denied(), || outcome(&w.probe(&a)));
    check("spec {}: B", denied(), || outcome(&w.probe(&b)));
    check("spec {} on server: A to other", allowed(), || {
        to_other(&w, Client::A)
    });

    // `rules: [{}]`: everything allowed.
    w.apply(
        "p.yaml",
        &server_policy("allow-all", "rules: [{}]"),
        "ns[authz]-policy[allow-all]-rule[0]",
        true,
    );
    check("rules [{}]: A", allowed(), || outcome(&w.probe(&a)));
    check("rules [{}]: B", allowed(), || outcome(&w.probe(&b)));

    // A dry-run DENY (`istio.io/dry-run: "true"`) is evaluated, counted, never enforced.
    let dry_run = [
        server_policy("allow-all", "rules: [{}]"),
        server_policy(
            "dry-deny-b",
            "action: DENY, rules: [{from: [{source: {namespaces: [outside]}}]}]",
        )
        .replacen(
            "namespace: authz}",
            "namespace: authz, annotations: {istio.io/dry-run: \"true\"}}",
            1,
        ),
    ]
    .concat();
    w.apply(
        "p.yaml",
        &dry_run,
        "ns[authz]-policy[dry-deny-b]-rule[0]",
        true,
    );
    check("dry-run DENY: B", allowed(), || outcome(&w.probe(&b)));
    wait_envoy_stat(
        &w.server,
        &format!("http.inbound_0.0.0.0_{MAIN}.rbac.istio_dry_run_deny.shadow_denied"),
        Duration::from_secs(10),
        |n| n > 0,
    )
    .unwrap();

    // DENY wins over ALLOW: both match B; A is allowed except where the DENY path matches.
    let both = [
        server_policy("allow-all", "rules: [{}]"),
        server_policy(
            "deny-b",
            "action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/outside/sa/client-b]}}]}, {to: [{operation: {paths: ['/admin/*']}}]}]",
        ),
    ]
    .concat();
    w.apply("p.yaml", &both, "ns[authz]-policy[deny-b]-rule[1]", true);
    check("DENY over ALLOW: A", allowed(), || outcome(&w.probe(&a)));
    check("DENY over ALLOW: B", denied(), || outcome(&w.probe(&b)));
    check("DENY over ALLOW: A /admin", denied(), || {
        outcome(&w.probe(&a_admin))
    });

    // AUDIT never blocks; the LOG filter counts what it matched.
    let audit = [
        server_policy("allow-all", "rules: [{}]"),
        server_policy(
            "audit-admin",
            "action: AUDIT, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]",
        ),
    ]
    .concat();
    w.apply(
        "p.yaml",
        &audit,
        "ns[authz]-policy[audit-admin]-rule[0]",
        true,
    );
    check("AUDIT: A /admin", allowed(), || outcome(&w.probe(&a_admin)));
    check("AUDIT: A /", allowed(), || outcome(&w.probe(&a)));
    // The access log marks what an AUDIT policy matched (and what it looked at and did not).
    for (path, hint) in [("/admin/users", true), ("/", false)] {
        let line = (
            format!("\"authz_audit\":{hint}"),
            format!("\"path\":\"{path}\""),
        );
        wait_for(
            Duration::from_secs(10),
            &format!("{path} audited: {hint}"),
            || {
                w.mesh
                    .envoy_log("server")
                    .lines()
                    .any(|l| l.contains(&line.0) && l.contains(&line.1))
            },
        )
        .unwrap();
    }

    // A namespace-wide policy (no selector) covers every workload of the namespace.
    w.apply(
        "p.yaml",
        &policy(NS, "ns-deny-all", ""),
        "ns[authz]-policy[audit-admin]",
        false,
    );
    w.wait_listener(w.other.as_ref().unwrap(), RBAC_FILTER, true);
    check("namespace spec {}: A to server", denied(), || {
        outcome(&w.probe(&a))
    });
    check("namespace spec {}: A to other", denied(), || {
        to_other(&w, Client::A)
    });

    // A policy in the root namespace covers the whole mesh.
    w.apply(
        "p.yaml",
        &policy(
            "istio-system",
            "mesh-deny-outside",
            "action: DENY, rules: [{from: [{source: {namespaces: [outside]}}]}]",
        ),
        "ns[istio-system]-policy[mesh-deny-outside]-rule[0]",
        true,
    );
    w.wait_listener(
        w.other.as_ref().unwrap(),
        "ns[istio-system]-policy[mesh-deny-outside]-rule[0]",
        true,
    );
    check("mesh-wide DENY: B to other", denied(), || {
        to_other(&w, Client::B)
    });
    check("mesh-wide DENY: A to other", allowed(), || {
        to_other(&w, Client::A)
    });
    check("mesh-wide DENY: B to server", denied(), || {
        outcome(&w.probe(&b))
    });

    // A path template: `{*}` is exactly one segment, through Envoy's URI template matcher.
    w.apply(
        "p.yaml",
        &server_policy(
            "api-items",
            "rules: [{to: [{operation: {paths: ['/api/{*}/items']}}]}]",
        ),
        "ns[authz]-policy[api-items]-rule[0]",
        true,
    );
    for (path, want) in [
        ("/api/v1/items", allowed()),
        ("/api/v1/x/items", denied()),
        ("/other", denied()),
    ] {
        check(
            &format!("template /api/{{*}}/items: A {path}"),
            want,
            || outcome(&w.probe(&get(Client::A, path))),
        );
    }

    // A policy with an invalid field (`{**}` not the last operator) fails closed for what it
    // selects, and says so.
    w.apply(
        "p.yaml",
        &server_policy(
            "path-template",
            "rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]",
        ),
        "ns[authz]-policy[path-template]-fail-closed",
        true,
    );
    check("unsupported: A to server", denied(), || {
        outcome(&w.probe(&a))
    });
    check("unsupported: A to other", allowed(), || {
        to_other(&w, Client::A)
    });
    let configz = w.mesh.admin_json("/debug/configz").unwrap();
    let rejected = configz["rejected"].as_array().unwrap();
    let entry = rejected
        .iter()
        .find(|r| r["name"] == "path-template")
        .unwrap_or_else(|| panic!("path-template not reported: {configz}"));
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains("invalid path template"), "{reason}");
    assert!(reason.contains("fails closed"), "{reason}");
    let out = std::process::Command::new(w.mesh.meshd_bin())
        .arg("analyze")
        .arg(w.mesh.config_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("p.yaml:")
            && stdout.contains("path-template")
            && stdout.contains("must be the last operator"),
        "{stdout}"
    );

    // TCP ports: the network RBAC filter. Allowed callers get through the TCP proxy; a denied
    // connection is closed (no HTTP answer at all), and the server's network RBAC filter
    // counted the denial.
    let tcp_url = format!("http://{SERVER}:{TCP}/");
    let tcp = |c: Client| outcome(&w.client(c).request("GET", &tcp_url, &[], None));
    let tcp_denials = || envoy_stat(&w.server, "tcp.allow.rbac.denied").unwrap();
    w.apply(
        "p.yaml",
        &server_policy(
            "tcp-a",
            "rules: [{from: [{source: {principals: [cluster.local/ns/authz/sa/client-a]}}], to: [{operation: {ports: ['8082']}}]}]",
        ),
        "ns[authz]-policy[tcp-a]-rule[0]",
        true,
    );
    check("TCP allow A: A", allowed(), || tcp(Client::A));
    let denials = tcp_denials();
    let b_tcp = tcp(Client::B);
    assert!(closed_unanswered(&b_tcp), "TCP allow A: B got {b_tcp}");
    wait_for(
        Duration::from_secs(10),
        "the server to count B's denial",
        || tcp_denials() > denials,
    )
    .unwrap();
    // An ALLOW rule with HTTP-only fields cannot match a TCP connection: dropped, so denied.
    w.apply(
        "p.yaml",
        &server_policy("tcp-get", "rules: [{to: [{operation: {methods: [GET]}}]}]"),
        "ns[authz]-policy[tcp-get]-rule[0]",
        true,
    );
    check("methods on TCP: A over HTTP port", allowed(), || {
        outcome(&w.probe(&a))
    });
    let denials = tcp_denials();
    let a_tcp = tcp(Client::A);
    assert!(closed_unanswered(&a_tcp), "methods on TCP: A got {a_tcp}");
    wait_for(
        Duration::from_secs(10),
        "the server to count A's denial",
        || tcp_denials() > denials,
    )
    .unwrap();
}

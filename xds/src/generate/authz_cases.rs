//! The AuthorizationPolicy translation table: for every supported field, an Istio rule (YAML),
//! the Envoy RBAC policy meshd makes of it (JSON, as `/debug/config_dump` renders it), and for the
//! run through real Envoy one request the policy allows and one it denies (403).
//!
//! Pure data, shared by the unit test in `authz.rs` and by `tests/tests/e2e/authz_table.rs`.
//!
//! The end-to-end world: workload `server` (namespace `authz`, service account `server`,
//! 10.44.0.20, labels `app: server`) behind service `server.authz.svc.cluster.local` (VIP
//! 10.96.0.20) on HTTP ports 8080 (`Main`) and 8081 (`Second`); client A is service account
//! `client-a` in namespace `authz` at 10.44.0.21, client B is service account `client-b` in
//! namespace `outside` at 10.44.0.22. Each case is one ALLOW policy selecting `app: server`.

#![allow(dead_code)] // each user reads a different part

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    A,
    B,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Main,
    Second,
}

/// One request from a client's pod, through its sidecar, to the server.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub client: Client,
    pub port: Port,
    pub method: &'static str,
    pub path: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    /// Address the service by its VIP rather than its name (a different Host header).
    pub by_vip: bool,
}

const fn get(client: Client, path: &'static str) -> Probe {
    Probe {
        client,
        port: Port::Main,
        method: "GET",
        path,
        headers: &[],
        by_vip: false,
    }
}

const fn a() -> Probe {
    get(Client::A, "/")
}

const fn b() -> Probe {
    get(Client::B, "/")
}

const fn method(m: &'static str) -> Probe {
    Probe { method: m, ..a() }
}

const fn second() -> Probe {
    Probe {
        port: Port::Second,
        ..a()
    }
}

const fn vip() -> Probe {
    Probe {
        by_vip: true,
        ..a()
    }
}

const fn with(headers: &'static [(&'static str, &'static str)]) -> Probe {
    Probe { headers, ..a() }
}

pub struct Case {
    pub name: &'static str,
    /// The policy's spec without its selector, as a YAML flow mapping's entries.
    pub spec: &'static str,
    /// The Envoy RBAC policy for `rules[0]` on an HTTP port.
    pub envoy: &'static str,
    /// (allowed, denied) through real Envoy; `None`: translation only.
    pub e2e: Option<(Probe, Probe)>,
}

pub const CASES: &[Case] = &[
    // ---- from.source ----
    Case {
        name: "principals",
        spec: "rules: [{from: [{source: {principals: [cluster.local/ns/authz/sa/client-a]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/authz/sa/client-a"}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "principals-prefix",
        spec: "rules: [{from: [{source: {principals: [cluster.local/ns/authz/*]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"prefix": "spiffe://cluster.local/ns/authz/"}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "principals-suffix",
        spec: "rules: [{from: [{source: {principals: ['*/sa/client-a']}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"suffix": "/sa/client-a"}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "principals-any",
        spec: "rules: [{from: [{source: {principals: ['*']}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"safe_regex": {"regex": ".+"}}}}]}"#,
        e2e: None,
    },
    Case {
        name: "principals-several",
        spec: "rules: [{from: [{source: {principals: [cluster.local/ns/authz/sa/x, cluster.local/ns/authz/sa/client-a]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"or_ids": {"ids": [
            {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/authz/sa/x"}}},
            {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/authz/sa/client-a"}}}]}}]}"#,
        e2e: None,
    },
    Case {
        name: "not-principals",
        spec: "rules: [{from: [{source: {notPrincipals: [cluster.local/ns/outside/sa/client-b]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/outside/sa/client-b"}}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "service-accounts",
        spec: "rules: [{from: [{source: {serviceAccounts: [authz/client-a]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/authz/sa/client-a"}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "not-service-accounts",
        spec: "rules: [{from: [{source: {notServiceAccounts: [outside/client-b, authz/x]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"or_ids": {"ids": [
            {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/outside/sa/client-b"}}},
            {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/authz/sa/x"}}}]}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "namespaces",
        spec: "rules: [{from: [{source: {namespaces: [authz]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/authz/.*"}}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "namespaces-wildcard",
        spec: "rules: [{from: [{source: {namespaces: ['auth*']}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/auth.*/.*"}}}}]}"#,
        e2e: None,
    },
    Case {
        name: "not-namespaces",
        spec: "rules: [{from: [{source: {notNamespaces: [outside]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/outside/.*"}}}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "ip-blocks",
        spec: "rules: [{from: [{source: {ipBlocks: [10.44.0.21/32]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"direct_remote_ip": {"address_prefix": "10.44.0.21", "prefix_len": 32}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "not-ip-blocks",
        spec: "rules: [{from: [{source: {notIpBlocks: [10.44.0.22]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"direct_remote_ip": {"address_prefix": "10.44.0.22", "prefix_len": 32}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "remote-ip-blocks",
        spec: "rules: [{from: [{source: {remoteIpBlocks: [10.44.0.21/32]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"remote_ip": {"address_prefix": "10.44.0.21", "prefix_len": 32}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "not-remote-ip-blocks",
        spec: "rules: [{from: [{source: {notRemoteIpBlocks: [10.44.0.0/30]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"remote_ip": {"address_prefix": "10.44.0.0", "prefix_len": 30}}}]}"#,
        e2e: None,
    },
    Case {
        name: "source-fields-and",
        spec: "rules: [{from: [{source: {namespaces: [authz], notPrincipals: [cluster.local/ns/authz/sa/x]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"and_ids": {"ids": [
            {"not_id": {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/authz/sa/x"}}}},
            {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/authz/.*"}}}}]}}]}"#,
        e2e: None,
    },
    Case {
        name: "sources-or",
        spec: "rules: [{from: [{source: {principals: [cluster.local/ns/authz/sa/x]}}, {source: {ipBlocks: [10.44.0.21]}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [
            {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/authz/sa/x"}}},
            {"direct_remote_ip": {"address_prefix": "10.44.0.21", "prefix_len": 32}}]}"#,
        e2e: Some((a(), b())),
    },
    // ---- to.operation ----
    Case {
        name: "hosts",
        spec: "rules: [{to: [{operation: {hosts: ['server.authz.svc.cluster.local:*']}}]}]",
        envoy: r#"{"permissions": [{"header": {"name": ":authority", "string_match": {"prefix": "server.authz.svc.cluster.local:", "ignore_case": true}}}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), vip())),
    },
    Case {
        name: "hosts-exact-any-case",
        spec: "rules: [{to: [{operation: {hosts: ['Server.Authz.Svc.Cluster.Local:8080']}}]}]",
        envoy: r#"{"permissions": [{"header": {"name": ":authority", "string_match": {"exact": "Server.Authz.Svc.Cluster.Local:8080", "ignore_case": true}}}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), vip())),
    },
    Case {
        name: "hosts-suffix-and-any",
        spec: "rules: [{to: [{operation: {hosts: ['*.cluster.local:8080', '*']}}]}]",
        envoy: r#"{"permissions": [{"or_rules": {"rules": [
            {"header": {"name": ":authority", "string_match": {"suffix": ".cluster.local:8080", "ignore_case": true}}},
            {"header": {"name": ":authority", "present_match": true}}]}}], "principals": [{"any": true}]}"#,
        e2e: None,
    },
    Case {
        name: "not-hosts",
        spec: "rules: [{to: [{operation: {notHosts: ['10.96.0.*']}}]}]",
        envoy: r#"{"permissions": [{"not_rule": {"header": {"name": ":authority", "string_match": {"prefix": "10.96.0.", "ignore_case": true}}}}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), vip())),
    },
    Case {
        name: "ports",
        spec: "rules: [{to: [{operation: {ports: ['8080']}}]}]",
        envoy: r#"{"permissions": [{"destination_port": 8080}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), second())),
    },
    Case {
        name: "not-ports",
        spec: "rules: [{to: [{operation: {notPorts: ['8081']}}]}]",
        envoy: r#"{"permissions": [{"not_rule": {"destination_port": 8081}}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), second())),
    },
    Case {
        name: "methods",
        spec: "rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]",
        envoy: r#"{"permissions": [{"or_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"header": {"name": ":method", "string_match": {"exact": "HEAD"}}}]}}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), method("POST"))),
    },
    Case {
        name: "not-methods",
        spec: "rules: [{to: [{operation: {notMethods: [DELETE]}}]}]",
        envoy: r#"{"permissions": [{"not_rule": {"header": {"name": ":method", "string_match": {"exact": "DELETE"}}}}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), method("DELETE"))),
    },
    Case {
        name: "paths-exact",
        spec: "rules: [{to: [{operation: {paths: [/health]}}]}]",
        envoy: r#"{"permissions": [{"url_path": {"path": {"exact": "/health"}}}], "principals": [{"any": true}]}"#,
        e2e: Some((get(Client::A, "/health?full=1"), get(Client::A, "/healthz"))),
    },
    Case {
        name: "paths-prefix",
        spec: "rules: [{to: [{operation: {paths: ['/public/*']}}]}]",
        envoy: r#"{"permissions": [{"url_path": {"path": {"prefix": "/public/"}}}], "principals": [{"any": true}]}"#,
        e2e: Some((get(Client::A, "/public/x"), get(Client::A, "/private/x"))),
    },
    Case {
        name: "paths-suffix",
        spec: "rules: [{to: [{operation: {paths: ['*.json']}}]}]",
        envoy: r#"{"permissions": [{"url_path": {"path": {"suffix": ".json"}}}], "principals": [{"any": true}]}"#,
        e2e: Some((get(Client::A, "/a/b.json"), get(Client::A, "/a/b.xml"))),
    },
    Case {
        name: "paths-any",
        spec: "rules: [{to: [{operation: {paths: ['*']}}]}]",
        envoy: r#"{"permissions": [{"url_path": {"path": {"safe_regex": {"regex": ".+"}}}}], "principals": [{"any": true}]}"#,
        e2e: None,
    },
    Case {
        name: "paths-template-one-segment",
        spec: "rules: [{to: [{operation: {paths: ['/api/{*}/items']}}]}]",
        envoy: r#"{"permissions": [{"uri_template": {"name": "envoy.path.match.uri_template.uri_template_matcher", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig", "path_template": "/api/*/items"}}}], "principals": [{"any": true}]}"#,
        e2e: Some((
            get(Client::A, "/api/v1/items?page=2"),
            get(Client::A, "/api/v1/x/items"),
        )),
    },
    Case {
        name: "paths-template-any-segments",
        spec: "rules: [{to: [{operation: {paths: ['/api/{**}']}}]}]",
        envoy: r#"{"permissions": [{"uri_template": {"name": "envoy.path.match.uri_template.uri_template_matcher", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig", "path_template": "/api/**"}}}], "principals": [{"any": true}]}"#,
        e2e: Some((get(Client::A, "/api/v1/x/items"), get(Client::A, "/other"))),
    },
    Case {
        name: "not-paths-template",
        spec: "rules: [{to: [{operation: {notPaths: ['/admin/{*}']}}]}]",
        envoy: r#"{"permissions": [{"not_rule": {"uri_template": {"name": "envoy.path.match.uri_template.uri_template_matcher", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig", "path_template": "/admin/*"}}}}], "principals": [{"any": true}]}"#,
        e2e: Some((
            get(Client::A, "/admin/users/1"),
            get(Client::A, "/admin/users"),
        )),
    },
    Case {
        name: "not-paths",
        spec: "rules: [{to: [{operation: {notPaths: ['/admin/*']}}]}]",
        envoy: r#"{"permissions": [{"not_rule": {"url_path": {"path": {"prefix": "/admin/"}}}}], "principals": [{"any": true}]}"#,
        e2e: Some((get(Client::A, "/x"), get(Client::A, "/admin/x"))),
    },
    Case {
        name: "operation-fields-and",
        spec: "rules: [{to: [{operation: {methods: [GET], paths: ['/api/*'], ports: ['8080']}}]}]",
        envoy: r#"{"permissions": [{"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"url_path": {"path": {"prefix": "/api/"}}},
            {"destination_port": 8080}]}}], "principals": [{"any": true}]}"#,
        e2e: Some((get(Client::A, "/api/v1"), method("POST"))),
    },
    Case {
        name: "operations-or",
        spec: "rules: [{to: [{operation: {methods: [GET]}}, {operation: {ports: ['8081']}}]}]",
        envoy: r#"{"permissions": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"destination_port": 8081}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), method("PUT"))),
    },
    // ---- when ----
    Case {
        name: "when-request-header",
        spec: "rules: [{when: [{key: 'request.headers[x-tenant]', values: [acme]}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"header": {"name": "x-tenant", "string_match": {"exact": "acme"}}}]}"#,
        e2e: Some((with(&[("x-tenant", "acme")]), a())),
    },
    Case {
        name: "when-request-header-not",
        spec: "rules: [{when: [{key: 'request.headers[x-tenant]', notValues: ['evil*']}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"header": {"name": "x-tenant", "string_match": {"prefix": "evil"}}}}]}"#,
        e2e: Some((
            with(&[("x-tenant", "acme")]),
            with(&[("x-tenant", "evil-corp")]),
        )),
    },
    Case {
        name: "when-request-header-present",
        spec: "rules: [{when: [{key: 'request.headers[authorization]', values: ['*']}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"header": {"name": "authorization", "present_match": true}}]}"#,
        e2e: None,
    },
    Case {
        name: "when-source-ip",
        spec: "rules: [{when: [{key: source.ip, values: [10.44.0.21]}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"direct_remote_ip": {"address_prefix": "10.44.0.21", "prefix_len": 32}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "when-remote-ip",
        spec: "rules: [{when: [{key: remote.ip, notValues: [10.44.0.22/32]}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"remote_ip": {"address_prefix": "10.44.0.22", "prefix_len": 32}}}]}"#,
        e2e: None,
    },
    Case {
        name: "when-source-namespace",
        spec: "rules: [{when: [{key: source.namespace, values: [authz]}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/authz/.*"}}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "when-source-principal",
        spec: "rules: [{when: [{key: source.principal, notValues: [cluster.local/ns/outside/sa/client-b]}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/outside/sa/client-b"}}}}]}"#,
        e2e: Some((a(), b())),
    },
    Case {
        name: "when-destination-ip",
        spec: "rules: [{when: [{key: destination.ip, values: [10.44.0.20/32]}]}]",
        envoy: r#"{"permissions": [{"destination_ip": {"address_prefix": "10.44.0.20", "prefix_len": 32}}], "principals": [{"any": true}]}"#,
        e2e: None,
    },
    Case {
        name: "when-destination-port",
        spec: "rules: [{when: [{key: destination.port, values: ['8080']}]}]",
        envoy: r#"{"permissions": [{"destination_port": 8080}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), second())),
    },
    Case {
        name: "when-connection-sni",
        spec: "rules: [{when: [{key: connection.sni, values: ['outbound_.8080_*']}]}]",
        envoy: r#"{"permissions": [{"requested_server_name": {"prefix": "outbound_.8080_"}}], "principals": [{"any": true}]}"#,
        e2e: Some((a(), second())),
    },
    // ---- the verified JWT (RequestAuthentication): end to end in traffic_jwt.rs ----
    Case {
        name: "from-request-principals-any",
        spec: "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "iss"}], "value": {"present_match": true}}}}]}"#,
        e2e: None,
    },
    Case {
        name: "from-request-principals-exact",
        spec: "rules: [{from: [{source: {requestPrincipals: ['issuer-1/alice']}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"and_ids": {"ids": [{"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "iss"}], "value": {"string_match": {"exact": "issuer-1"}}}}}, {"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "sub"}], "value": {"string_match": {"exact": "alice"}}}}}]}}]}"#,
        e2e: None,
    },
    Case {
        name: "from-not-request-principals",
        spec: "rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"not_id": {"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "iss"}], "value": {"present_match": true}}}}}]}"#,
        e2e: None,
    },
    Case {
        name: "when-request-auth-claims-nested",
        spec: "rules: [{when: [{key: 'request.auth.claims[realm][roles]', values: [admin]}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"or_ids": {"ids": [{"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "realm"}, {"key": "roles"}], "value": {"string_match": {"exact": "admin"}}}}}, {"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "realm"}, {"key": "roles"}], "value": {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}}}}}]}}]}"#,
        e2e: None,
    },
    Case {
        name: "when-request-auth-audiences",
        spec: "rules: [{when: [{key: request.auth.audiences, values: ['api.*']}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"or_ids": {"ids": [{"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "aud"}], "value": {"string_match": {"prefix": "api."}}}}}, {"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "aud"}], "value": {"list_match": {"one_of": {"string_match": {"prefix": "api."}}}}}}}]}}]}"#,
        e2e: None,
    },
    Case {
        name: "when-request-auth-presenter",
        spec: "rules: [{when: [{key: request.auth.presenter, values: ['*']}]}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"sourced_metadata": {"metadata_matcher": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "azp"}], "value": {"present_match": true}}}}]}"#,
        e2e: None,
    },
    // ---- whole rules ----
    Case {
        name: "from-to-when",
        spec: "rules: [{from: [{source: {namespaces: [authz]}}], to: [{operation: {methods: [GET]}}], when: [{key: 'request.headers[x-tenant]', values: [acme]}, {key: destination.port, values: ['8080']}]}]",
        envoy: r#"{"permissions": [{"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"destination_port": 8080}]}}],
          "principals": [{"and_ids": {"ids": [
            {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/authz/.*"}}}},
            {"header": {"name": "x-tenant", "string_match": {"exact": "acme"}}}]}}]}"#,
        e2e: Some((
            with(&[("x-tenant", "acme")]),
            Probe {
                client: Client::B,
                ..with(&[("x-tenant", "acme")])
            },
        )),
    },
    Case {
        name: "allow-all-rule",
        spec: "rules: [{}]",
        envoy: r#"{"permissions": [{"any": true}], "principals": [{"any": true}]}"#,
        e2e: None,
    },
];

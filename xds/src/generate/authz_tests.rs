//! Unit tests of the AuthorizationPolicy → RBAC builder (authz.rs): the translation table,
//! principals, actions and their order, TCP ports, scope, dry-run, fail-closed, encoding.

use super::*;
use crate::json::{any_to_json, message_to_json};
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use meshd_model::{MeshConfig, parse_file};
use prost::Message;
use serde_json::{Value, json};

fn mesh(yaml: &str) -> MeshConfig {
    let file = parse_file("authz.yaml", yaml).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    MeshConfig::assemble([&file])
}

fn policy_doc(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{spec}}}\n---\n"
    )
}

fn server() -> Workload {
    Workload {
        name: "server".into(),
        namespace: "authz".into(),
        address: "10.44.0.20".into(),
        labels: [("app".to_string(), "server".to_string())].into(),
        service_account: "server".into(),
        ports: Default::default(),
        locality: String::new(),
    }
}

fn set_for(config: &MeshConfig, w: &Workload, tcp: bool) -> RbacSet {
    translate(
        &applicable(config, "istio-system", &w.namespace, &w.labels),
        tcp,
        "cluster.local",
    )
}

fn names(p: &Option<Policies>) -> Option<Vec<&str>> {
    p.as_ref().map(|p| p.keys().map(String::as_str).collect())
}

/// The table: every supported field, Istio YAML → Envoy RBAC policy.
#[test]
fn translation_table() {
    let mut seen = std::collections::BTreeSet::new();
    for case in cases::CASES {
        assert!(seen.insert(case.name), "duplicate case {}", case.name);
        let spec = format!("selector: {{matchLabels: {{app: server}}}}, {}", case.spec);
        let config = mesh(&policy_doc("authz", case.name, &spec));
        assert!(
            config.rejected.is_empty(),
            "{}: {:?}",
            case.name,
            config.rejected
        );
        let set = set_for(&config, &server(), false);
        let rule = format!("ns[authz]-policy[{}]-rule[0]", case.name);
        let allow = set.allow.as_ref().expect(case.name);
        let got = message_to_json(allow.get(&rule).expect(case.name));
        let want: Value = serde_json::from_str(case.envoy)
            .unwrap_or_else(|e| panic!("{}: bad expected JSON: {e}", case.name));
        assert_eq!(got, want, "{}:\n got {got}\nwant {want}", case.name);
        assert_eq!((set.deny, set.audit), (None, None), "{}", case.name);
    }
}

#[test]
fn a_cluster_local_principal_also_matches_the_mesh_trust_domain() {
    let config = mesh(&policy_doc(
        "authz",
        "p",
        "rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]}]",
    ));
    let set = translate(
        &applicable(&config, "istio-system", "authz", &server().labels),
        false,
        "example.org",
    );
    let got = message_to_json(&set.allow.unwrap()["ns[authz]-policy[p]-rule[0]"]);
    assert_eq!(
        got["principals"][0]["or_ids"]["ids"],
        json!([
            {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}},
            {"authenticated": {"principal_name": {"exact": "spiffe://example.org/ns/a/sa/b"}}}
        ])
    );
}

#[test]
fn spec_empty_denies_all_and_an_empty_rule_allows_all() {
    let config = mesh(&policy_doc("authz", "deny-all", ""));
    let set = set_for(&config, &server(), false);
    assert_eq!(set.allow, Some(Policies::new()), "ALLOW without rules");
    let filters = set.http_filters();
    assert_eq!(filters.len(), 1);
    let Some(http_filter::ConfigType::TypedConfig(any)) = &filters[0].config_type else {
        panic!("typed config")
    };
    // `rules` present and empty: Envoy denies every request.
    assert_eq!(
        any_to_json(any),
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                   "rules": {}, "rules_stat_prefix": "allow"})
    );

    let config = mesh(&policy_doc("authz", "allow-all", "rules: [{}]"));
    let set = set_for(&config, &server(), false);
    assert_eq!(
        names(&set.allow),
        Some(vec!["ns[authz]-policy[allow-all]-rule[0]"])
    );
    // A DENY policy without rules does nothing, so no filter at all.
    let config = mesh(&policy_doc("authz", "nothing", "action: DENY"));
    assert_eq!(set_for(&config, &server(), false), RbacSet::default());
}

#[test]
fn filters_run_audit_then_deny_then_allow() {
    let yaml = [
        policy_doc(
            "authz",
            "allow",
            "rules: [{to: [{operation: {methods: [GET]}}]}]",
        ),
        policy_doc(
            "authz",
            "deny",
            "action: DENY, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]",
        ),
        policy_doc("authz", "audit", "action: AUDIT, rules: [{}]"),
    ]
    .concat();
    let set = set_for(&mesh(&yaml), &server(), false);
    let actions: Vec<Value> = set
        .http_filters()
        .iter()
        .map(|f| {
            assert_eq!(f.name, HTTP_RBAC);
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!()
            };
            let j = any_to_json(any);
            json!([
                j["rules"]["action"],
                j["rules"]["policies"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect::<Vec<_>>()
            ])
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            json!(["LOG", ["ns[authz]-policy[audit]-rule[0]"]]),
            json!(["DENY", ["ns[authz]-policy[deny]-rule[0]"]]),
            // ALLOW is the enum's default, so proto3 JSON leaves it out.
            json!([null, ["ns[authz]-policy[allow]-rule[0]"]]),
        ]
    );
    let tcp: Vec<String> = set
        .network_filters()
        .iter()
        .map(|f| {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!()
            };
            any_to_json(any)["stat_prefix"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(tcp, ["tcp.audit.", "tcp.deny.", "tcp.allow."]);
}

#[test]
fn http_only_fields_on_a_tcp_port() {
    // ALLOW: a rule with an HTTP-only field is dropped (allows less); the others stay.
    let yaml = policy_doc(
        "authz",
        "allow",
        "rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [a]}}]}, {when: [{key: 'request.headers[x]', values: [y]}]}]",
    );
    let set = set_for(&mesh(&yaml), &server(), true);
    assert_eq!(
        names(&set.allow),
        Some(vec!["ns[authz]-policy[allow]-rule[1]"])
    );
    // Only HTTP-only rules: the ALLOW filter stays, empty, and denies all.
    let yaml = policy_doc(
        "authz",
        "allow",
        "rules: [{to: [{operation: {paths: [/x]}}]}]",
    );
    let set = set_for(&mesh(&yaml), &server(), true);
    assert_eq!(set.allow, Some(Policies::new()));
    // DENY: the HTTP-only field is ignored (denies more).
    let yaml = policy_doc(
        "authz",
        "deny",
        "action: DENY, rules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {methods: [POST], ports: ['9000']}}]}]",
    );
    let set = set_for(&mesh(&yaml), &server(), true);
    let got = message_to_json(&set.deny.unwrap()["ns[authz]-policy[deny]-rule[0]"]);
    assert_eq!(
        got,
        json!({"permissions": [{"destination_port": 9000}],
                   "principals": [{"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/a/.*"}}}}]})
    );
}

#[test]
fn a_policy_meshd_cannot_enforce_fails_closed_for_what_it_selects() {
    let yaml = [
            policy_doc(
                "authz",
                "jwt",
                "selector: {matchLabels: {app: server}}, rules: [{from: [{source: {requestPrincipals: ['a*b']}}]}]",
            ),
            policy_doc("authz", "ext", "action: CUSTOM, rules: [{}]"),
            policy_doc(
                "authz",
                "claims",
                "action: DENY, selector: {matchLabels: {app: other}}, rules: [{when: [{key: 'request.auth.claim[iss]', values: [x]}]}]",
            ),
        ]
        .concat();
    let config = mesh(&yaml);
    let reported: Vec<(&str, bool)> = config
        .rejected
        .iter()
        .map(|r| {
            (
                r.name.as_deref().unwrap(),
                r.reason.contains("fails closed"),
            )
        })
        .collect();
    assert_eq!(reported, [("claims", true), ("ext", true), ("jwt", true)]);
    assert_eq!(
        config.authorization_policies().count(),
        3,
        "kept, to fail closed"
    );
    for tcp in [false, true] {
        let set = set_for(&config, &server(), tcp);
        assert_eq!(
            names(&set.deny),
            Some(vec![
                "ns[authz]-policy[ext]-fail-closed",
                "ns[authz]-policy[jwt]-fail-closed"
            ]),
            "the `claims` policy selects another workload"
        );
        let rule = &set.deny.unwrap()["ns[authz]-policy[jwt]-fail-closed"];
        assert_eq!(
            message_to_json(rule),
            json!({"permissions": [{"any": true}], "principals": [{"any": true}]})
        );
    }
}

#[test]
fn scope_root_namespace_namespace_and_selector() {
    let yaml = [
        policy_doc(
            "istio-system",
            "mesh-wide",
            "action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]",
        ),
        policy_doc(
            "istio-system",
            "mesh-selected",
            "selector: {matchLabels: {app: server}}, action: AUDIT, rules: [{}]",
        ),
        policy_doc("authz", "ns-wide", "rules: [{}]"),
        policy_doc(
            "authz",
            "selected",
            "selector: {matchLabels: {app: server}}, rules: [{}]",
        ),
        policy_doc(
            "authz",
            "other-app",
            "selector: {matchLabels: {app: other}}, rules: [{}]",
        ),
        policy_doc("elsewhere", "other-ns", "rules: [{}]"),
    ]
    .concat();
    let config = mesh(&yaml);
    let got: Vec<&str> = applicable(&config, "istio-system", "authz", &server().labels)
        .iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(got, ["ns-wide", "selected", "mesh-selected", "mesh-wide"]);
    let mut other = server();
    other.labels = [("app".to_string(), "other".to_string())].into();
    let got: Vec<&str> = applicable(&config, "istio-system", "authz", &other.labels)
        .iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(got, ["ns-wide", "other-app", "mesh-wide"]);
}

#[test]
fn dry_run_policies_become_shadow_rules() {
    let dry = |name: &str, spec: &str| {
        policy_doc("authz", name, spec).replacen(
            "namespace: authz}",
            "namespace: authz, annotations: {istio.io/dry-run: \"true\"}}",
            1,
        )
    };
    let yaml = [
        policy_doc("authz", "allow-all", "rules: [{}]"),
        dry(
            "deny-b",
            "action: DENY, rules: [{from: [{source: {namespaces: [outside]}}]}]",
        ),
    ]
    .concat();
    let set = set_for(&mesh(&yaml), &server(), false);
    assert_eq!(set.deny, None, "nothing denied for real");
    assert_eq!(
        names(&set.shadow_deny),
        Some(vec!["ns[authz]-policy[deny-b]-rule[0]"])
    );
    assert_eq!(set.shadow_allow, None);
    let rendered: Vec<Value> = set
        .http_filters()
        .iter()
        .map(|f| {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!()
            };
            let mut j = any_to_json(any);
            for k in ["rules", "shadow_rules"] {
                if let Some(r) = j.get_mut(k) {
                    r["policies"] = json!(r["policies"].as_object().map(|o| o.len()));
                }
            }
            j
        })
        .collect();
    assert_eq!(
        rendered,
        [
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                       "shadow_rules": {"action": "DENY", "policies": 1},
                       "shadow_rules_stat_prefix": "istio_dry_run_deny",
                       "rules_stat_prefix": "deny"}),
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                       "rules": {"policies": 1}, "rules_stat_prefix": "allow"}),
        ]
    );

    // A dry-run `spec: {}`: the shadow denies all, the real filter enforces nothing; the
    // shadow carries the enforced ALLOW rules too.
    let yaml = [
        policy_doc(
            "authz",
            "allow-get",
            "rules: [{to: [{operation: {methods: [GET]}}]}]",
        ),
        dry("lockdown", ""),
    ]
    .concat();
    let set = set_for(&mesh(&yaml), &server(), false);
    assert_eq!(
        names(&set.allow),
        Some(vec!["ns[authz]-policy[allow-get]-rule[0]"])
    );
    assert_eq!(
        names(&set.shadow_allow),
        Some(vec!["ns[authz]-policy[allow-get]-rule[0]"])
    );
    let yaml = dry("lockdown", "");
    let set = set_for(&mesh(&yaml), &server(), true);
    assert_eq!(
        (set.allow.clone(), set.shadow_allow.clone()),
        (None, Some(Policies::new()))
    );
    let Some(filter::ConfigType::TypedConfig(any)) = &set.network_filters()[0].config_type else {
        panic!()
    };
    assert_eq!(
        any_to_json(any),
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                   "shadow_rules": {}, "stat_prefix": "tcp.allow.",
                   "shadow_rules_stat_prefix": "istio_dry_run_allow"})
    );
}

#[test]
fn encoding_is_stable_and_decodes_as_envoy_rbac() {
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    let mut yaml = String::new();
    for i in 0..20 {
        yaml.push_str(&policy_doc(
            "authz",
            &format!("p{i}"),
            "rules: [{}, {from: [{source: {namespaces: [x]}}]}]",
        ));
    }
    let config = mesh(&yaml);
    let encode = || {
        let set = set_for(&config, &server(), false);
        let Some(http_filter::ConfigType::TypedConfig(any)) =
            set.http_filters().remove(0).config_type
        else {
            panic!()
        };
        any
    };
    let first = encode();
    for _ in 0..5 {
        assert_eq!(encode(), first, "same policies, same bytes");
    }
    let decoded = HttpRbac::decode(first.value.as_slice()).unwrap();
    let rules = decoded.rules.unwrap();
    assert_eq!(rules.action, 0, "ALLOW");
    assert_eq!(rules.policies.len(), 40);
    assert_eq!(
        rules.policies["ns[authz]-policy[p7]-rule[1]"],
        set_for(&config, &server(), false).allow.unwrap()["ns[authz]-policy[p7]-rule[1]"]
    );
}

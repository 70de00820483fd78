//! Unit tests of `MeshConfig::assemble`: cross-object checks, rejections and their reasons, and
//! the shipped VoiceCore mesh.

mod assembly {
    use crate::mesh::*;
    use crate::parse_file;

    /// The per-kind views are ranges of the kind-ordered map: each sees exactly its kind,
    /// whatever kinds sort before and after it.
    #[test]
    fn each_kind_view_holds_exactly_that_kind() {
        let mesh =
            MeshConfig::assemble([
                &parse_file("embedded.yaml", crate::voicecore::MESH_YAML).unwrap()
            ]);
        for kind in crate::Kind::ALL {
            let expected: Vec<&ObjectKey> =
                mesh.objects.keys().filter(|k| k.kind == kind).collect();
            let got: Vec<ObjectKey> = mesh.objects_of(kind).map(|o| o.key()).collect();
            assert_eq!(got.iter().collect::<Vec<_>>(), expected, "{kind:?}");
        }
        assert_eq!(
            mesh.destination_rules().count(),
            mesh.objects_of(crate::Kind::DestinationRule).count()
        );
        assert!(mesh.destination_rules().count() > 0);
        assert!(mesh.virtual_services().count() > 0);
    }

    #[test]
    fn route_to_missing_subset_is_rejected_alone() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: ns}
spec:
  hosts: [a]
  http:
  - route:
    - destination: {host: a, subset: v9}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: good, namespace: ns}
spec:
  hosts: [b]
  http:
  - route:
    - destination: {host: b}
"#;
        let file = parse_file("vs.yaml", text).unwrap();
        let mesh = MeshConfig::assemble([&file]);
        assert_eq!(mesh.virtual_services().count(), 1);
        assert_eq!(mesh.rejected.len(), 1);
        assert!(mesh.rejected[0].reason.contains("v9"));
        assert_eq!(mesh.rejected[0].line, 2);
    }

    /// A subset only a rule with a `workloadSelector` defines is a subset all the same: the
    /// proxies that rule selects route to it (the others have no such cluster, as in Istio).
    #[test]
    fn route_to_a_subset_of_a_selector_rule_is_accepted() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a-for-web, namespace: ns}
spec:
  host: a
  workloadSelector: {matchLabels: {app: web}}
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: ns}
spec:
  hosts: [a]
  http:
  - route:
    - destination: {host: a, subset: v2}
"#;
        let file = parse_file("vs.yaml", text).unwrap();
        assert!(file.rejected.is_empty(), "{:?}", file.rejected);
        let mesh = MeshConfig::assemble([&file]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        assert_eq!(mesh.virtual_services().count(), 1);
        let (_, dr) = mesh.destination_rules().next().unwrap();
        assert_eq!(dr.workload_selector.as_ref().unwrap().labels["app"], "web");
    }

    /// DestinationRule fragments (one host, one namespace, same exportTo, no selector) act as
    /// one rule: a route may name the subsets of any of them, and what the merge drops (a
    /// repeated subset, a second top-level trafficPolicy) is a warning naming both objects.
    #[test]
    fn fragments_merge_and_what_they_drop_is_reported() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart-a, namespace: shop}
spec:
  host: cart
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart-b, namespace: shop}
spec:
  host: cart.shop.svc.cluster.local
  exportTo: ["*"]
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: v1, labels: {version: one}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart-private, namespace: shop}
spec:
  host: cart
  exportTo: ["."]
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart-selected, namespace: shop}
spec:
  host: cart
  workloadSelector: {matchLabels: {app: web}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: other}
spec:
  host: cart.shop.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
  - match: [{headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: cart, subset: v2}}]
  - route: [{destination: {host: cart, subset: v1}}]
"#;
        let file = parse_file("dr.yaml", text).unwrap();
        assert!(file.rejected.is_empty(), "{:?}", file.rejected);
        let mesh = MeshConfig::assemble([&file]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        assert_eq!(mesh.virtual_services().count(), 1);
        let shown: Vec<String> = mesh.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        assert!(
            shown[0].starts_with("dr.yaml:10: DestinationRule shop/cart-b: spec.subsets[0]: subset `v1` of cart.shop.svc.cluster.local is already defined by DestinationRule shop/cart-a"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with("dr.yaml:10: DestinationRule shop/cart-b: spec.trafficPolicy: ignored: DestinationRule shop/cart-a"),
            "{shown:#?}"
        );
    }

    #[test]
    fn authorization_policies_meshd_cannot_enforce_are_reported_and_kept() {
        let text = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ok, namespace: ns}
spec:
  selector:
    matchLabels: {app: a}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/ns/sa/b"], ipBlocks: [10.0.0.0/8]}
    to:
    - operation: {methods: [GET], paths: ["/api/*"], ports: ["8080"]}
    when:
    - {key: "request.headers[x-tenant]", values: [acme]}
    - {key: destination.port, notValues: ["9090"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unsupported, namespace: ns}
spec:
  action: CUSTOM
  provider: {name: ext}
  rules:
  - from:
    - source: {requestPrincipals: ["a*b"]}
    - source: {}
    to:
    - operation: {paths: ["/a/{**}/{*}", "/a*b"], ports: ["http"]}
    when:
    - {key: "request.auth.claim[iss]", values: [x]}
    - {key: source.ip, values: [not-an-ip]}
    - {key: request.host, values: [x]}
    - {key: connection.sni}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unreadable, namespace: ns}
spec:
  selector:
    matchLabels: {app: a}
  rules:
  - from:
    - source: {principal: ["typo"]}
"#;
        let file = parse_file("ap.yaml", text).unwrap();
        assert!(file.rejected.is_empty(), "{:?}", file.rejected);
        let mesh = MeshConfig::assemble([&file]);
        assert_eq!(mesh.authorization_policies().count(), 3, "all kept");
        let reasons: Vec<(&str, usize, &str)> = mesh
            .rejected
            .iter()
            .map(|r| (r.name.as_deref().unwrap(), r.line, r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:#?}");
        let (name, line, reason) = reasons[1];
        assert_eq!((name, line), ("unsupported", 17));
        for expected in [
            "spec.rules[0].from[0].source.requestPrincipals: `a*b`: `*` is allowed only",
            "spec.rules[0].from[1].source: must set at least one field",
            "spec.rules[0].to[0].operation.paths: `/a/{**}/{*}`: invalid path template",
            "spec.rules[0].to[0].operation.paths: `/a*b`: `*` is allowed only",
            "spec.rules[0].to[0].operation.ports: `http` is not a port number",
            "spec.rules[0].when[0].key: unknown attribute `request.auth.claim[iss]`",
            "spec.rules[0].when[1].values: `not-an-ip` is not an IP address or CIDR",
            "spec.rules[0].when[2].key: unknown attribute `request.host`",
            "spec.rules[0].when[3]: set values or notValues",
            "the policy fails closed",
        ] {
            assert!(
                reason.contains(expected),
                "missing {expected:?} in {reason}"
            );
        }
        let (name, line, reason) = reasons[0];
        assert_eq!(name, "unreadable");
        assert_eq!(line, 43, "the line of the unknown field: {reason}");
        assert!(reason.contains("unknown field `principal`"), "{reason}");
        let unreadable = mesh
            .authorization_policies()
            .find(|(o, _)| o.meta.name == "unreadable")
            .unwrap()
            .1;
        assert_eq!(
            unreadable.selector.as_ref().unwrap().labels["app"],
            "a",
            "the selector survives, so only the selected workloads fail closed"
        );
        assert!(unreadable.rules.is_empty());
    }

    #[test]
    fn security_selectors_read_match_labels() {
        let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: ns}\nspec:\n  selector:\n    matchLabels: {app: a}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n";
        let file = parse_file("pa.yaml", text).unwrap();
        assert!(file.rejected.is_empty(), "{:?}", file.rejected);
        let mesh = MeshConfig::assemble([&file]);
        let (_, pa) = mesh.peer_authentications().next().unwrap();
        assert_eq!(pa.selector.as_ref().unwrap().labels["app"], "a");
        let bad = text.replace("matchLabels", "labels");
        assert_eq!(parse_file("pa.yaml", &bad).unwrap().rejected.len(), 1);
    }

    #[test]
    fn duplicates_keep_the_first() {
        let text =
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {}\n";
        let a = parse_file("a.yaml", text).unwrap();
        let b = parse_file("b.yaml", text).unwrap();
        let mesh = MeshConfig::assemble([&a, &b]);
        assert_eq!(mesh.sidecars().count(), 1);
        assert_eq!(mesh.rejected[0].file, "b.yaml");
        assert!(mesh.rejected[0].reason.contains("a.yaml:1"));
    }
}

mod voicecore {
    use crate::mesh::*;
    use crate::parse_file;

    fn shipped() -> MeshConfig {
        let files = crate::voicecore::FILES.map(|(name, text)| parse_file(name, text).unwrap());
        MeshConfig::assemble(&files)
    }

    /// The call graph documented at the top of deploy/mesh/voicecore-authz.yaml.
    #[test]
    fn the_voicecore_policies_allow_exactly_the_documented_graph() {
        let mesh = shipped();
        let mut allowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut deny_all = Vec::new();
        for (o, ap) in mesh.authorization_policies() {
            assert_eq!(o.meta.namespace(), "voicecore-ai");
            assert!(ap.problems().is_empty(), "{}", o.meta.name);
            let Some(sel) = &ap.selector else {
                assert!(
                    ap.rules.is_empty(),
                    "the only policy without selector denies all"
                );
                deny_all.push(o.meta.name.clone());
                continue;
            };
            let callers = ap
                .rules
                .iter()
                .flat_map(|r| &r.from)
                .flat_map(|f| &f.source.principals)
                .map(|p| p.rsplit('/').next().unwrap().to_string())
                .collect();
            allowed.insert(sel.labels["app"].clone(), callers);
        }
        assert_eq!(deny_all, ["allow-nothing"]);
        let graph: BTreeMap<String, Vec<String>> = [
            ("gateway", &["istio-ingressgateway"][..]),
            (
                "tenant-service",
                &["gateway", "call-service", "integration-service"],
            ),
            ("call-service", &["gateway", "integration-service"]),
            ("ai-service", &["gateway", "call-service"]),
            (
                "crm-service",
                &["gateway", "call-service", "integration-service"],
            ),
            (
                "analytics-service",
                &["gateway", "call-service", "ai-service"],
            ),
            ("integration-service", &["gateway", "crm-service"]),
            ("billing-service", &["gateway", "tenant-service"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
        assert_eq!(allowed, graph);
        // Every service has its policy, every principal is a real workload's identity.
        let accounts: Vec<&str> = mesh
            .workloads
            .iter()
            .map(|w| w.service_account.as_str())
            .collect();
        for callers in graph.values() {
            for c in callers {
                assert!(accounts.contains(&c.as_str()), "{c}");
            }
        }
        assert_eq!(graph.len(), mesh.services.len());
    }

    #[test]
    fn the_shipped_voicecore_mesh_is_clean() {
        let mesh = shipped();
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        assert_eq!(mesh.services.len(), 8);
        assert_eq!(mesh.workloads.len(), 9);
        assert!(mesh.services.iter().all(|s| s.endpoints.len() == 1));
    }
}

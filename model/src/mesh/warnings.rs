//! Valid fields meshd accepts but does not act on yet: the object stays in force (dropping it
//! would drop what it does implement, and every route to its subsets), and each such field is
//! reported beside the rejections, never ignored silently.

use super::{MeshConfig, Rejected};
use crate::networking::{
    ClientTlsSettings, LoadBalancerSettings, SimpleLb, TlsMode, TrafficPolicy,
};
use crate::{ConfigObject, Spec};

fn lb_notes(at: &str, lb: &LoadBalancerSettings, outlier: bool, out: &mut Vec<String>) {
    if let Some(l) = &lb.locality_lb_setting
        && l.enabled != Some(false)
        && l.distribute.is_empty()
        && !outlier
    {
        // Istio's rule: priorities without outlier detection never move traffic, since Envoy
        // would not learn that the preferred endpoints are down.
        out.push(format!(
            "{at}.localityLbSetting: locality failover applies only with outlierDetection; without it no priorities are set"
        ));
    }
    let slow_start_capable = lb.consistent_hash.is_none()
        && matches!(
            lb.simple,
            None | Some(SimpleLb::Unspecified | SimpleLb::LeastRequest | SimpleLb::RoundRobin)
        );
    if lb.warmup_window().is_some() && !slow_start_capable {
        out.push(format!(
            "{at}: warmup applies to ROUND_ROBIN and LEAST_REQUEST only; it has no effect with this policy"
        ));
    }
}

/// `outlier`: whether the rule sets outlierDetection anywhere (its top level, a port, a subset).
fn policy_notes(at: &str, tp: &TrafficPolicy, outlier: bool, out: &mut Vec<String>) {
    if let Some(lb) = &tp.load_balancer {
        lb_notes(&format!("{at}.loadBalancer"), lb, outlier, out);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        if let Some(lb) = &pl.load_balancer {
            lb_notes(
                &format!("{at}.portLevelSettings[{i}].loadBalancer"),
                lb,
                outlier,
                out,
            );
        }
    }
}

/// Istio reads a client `credentialName` at sidecars only from a rule with a workloadSelector
/// (else every sidecar in the rule's reach would wait for a Secret it may not be allowed):
/// without one, the sidecars originate no TLS to the host, as under istiod.
fn credential_notes(at: &str, tp: &TrafficPolicy, out: &mut Vec<String>) {
    let note = |at: String, tls: Option<&ClientTlsSettings>, out: &mut Vec<String>| {
        if tls.is_some_and(|t| {
            t.credential_name.is_some() && matches!(t.mode, TlsMode::Simple | TlsMode::Mutual)
        }) {
            out.push(format!(
                "{at}.tls.credentialName: without a workloadSelector it applies at gateways only; the sidecars this rule reaches connect to the host without TLS (as under Istio)"
            ));
        }
    };
    note(at.to_string(), tp.tls.as_ref(), out);
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        note(format!("{at}.portLevelSettings[{i}]"), pl.tls.as_ref(), out);
    }
}

fn sets_outlier_detection(tp: &TrafficPolicy) -> bool {
    tp.outlier_detection.is_some()
        || tp
            .port_level_settings
            .iter()
            .any(|p| p.outlier_detection.is_some())
}

fn notes(o: &ConfigObject) -> Vec<String> {
    let mut out = Vec::new();
    if let Spec::AuthorizationPolicy(ap) = &o.spec
        && ap.action == crate::security::AuthzAction::Custom
        && crate::security::is_dry_run(&o.meta.annotations)
    {
        // Istio documents dry-run for ALLOW and DENY only; a CUSTOM policy stays in force.
        out.push(
            "metadata.annotations[istio.io/dry-run]: dry-run applies to ALLOW and DENY policies only (as in Istio); this CUSTOM policy is enforced"
                .into(),
        );
    }
    if let Spec::Gateway(gw) = &o.spec {
        for (i, s) in gw.servers.iter().enumerate() {
            if s.port.target_port.is_some() {
                out.push(format!(
                    "spec.servers[{i}].port.targetPort: applies to ServiceEntry ports only; a Gateway server listens on its port number and ignores it (as Istio)"
                ));
            }
        }
    }
    if let Spec::DestinationRule(dr) = &o.spec {
        let outlier = dr
            .traffic_policy
            .as_deref()
            .into_iter()
            .chain(
                dr.subsets
                    .iter()
                    .filter_map(|s| s.traffic_policy.as_deref()),
            )
            .any(sets_outlier_detection);
        let selects = dr.workload_selector.is_some();
        if let Some(tp) = &dr.traffic_policy {
            policy_notes("spec.trafficPolicy", tp, outlier, &mut out);
            if !selects {
                credential_notes("spec.trafficPolicy", tp, &mut out);
            }
        }
        for (i, s) in dr.subsets.iter().enumerate() {
            if let Some(tp) = &s.traffic_policy {
                let at = format!("spec.subsets[{i}].trafficPolicy");
                policy_notes(&at, tp, outlier, &mut out);
                if !selects {
                    credential_notes(&at, tp, &mut out);
                }
            }
        }
    }
    out
}

pub(crate) fn warnings(mesh: &MeshConfig) -> Vec<Rejected> {
    let mut out: Vec<Rejected> = mesh
        .objects
        .values()
        .flat_map(|o| {
            notes(o).into_iter().map(|reason| Rejected {
                file: o.source.file.clone(),
                line: o.source.line,
                kind: Some(o.kind()),
                namespace: Some(o.meta.namespace().to_string()),
                name: Some(o.meta.name.clone()),
                reason,
            })
        })
        .collect();
    out.extend(super::fragments::warnings(mesh));
    out.extend(egress_proxy_warnings(mesh));
    out
}

/// A Sidecar's `egressProxy` that names no service port of the registry: the traffic it should
/// take has no cluster to go to, and is refused until a service defines that host and port.
fn egress_proxy_warnings(mesh: &MeshConfig) -> Vec<Rejected> {
    let mut out = Vec::new();
    for (o, sc) in mesh.sidecars() {
        let Some(proxy) = sc
            .outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.egress_proxy.as_ref())
        else {
            continue;
        };
        let host = super::qualify_host(&proxy.host, o.meta.namespace(), "cluster.local");
        let port = proxy.port.as_ref().map(|p| p.number).unwrap_or(0);
        let known = mesh
            .services
            .iter()
            .any(|s| s.hostname == host && s.ports.iter().any(|p| p.number == port));
        if !known {
            out.push(Rejected {
                file: o.source.file.clone(),
                line: o.source.line,
                kind: Some(o.kind()),
                namespace: Some(o.meta.namespace().to_string()),
                name: Some(o.meta.name.clone()),
                reason: format!(
                    "spec.outboundTrafficPolicy.egressProxy: no service in the registry has host {host} and port {port}; traffic to unknown destinations is refused until one does"
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{MeshConfig, parse_file};

    const ROUTE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
  - route:
    - {destination: {host: cart, subset: v1}, weight: 90}
    - {destination: {host: cart, subset: v2}, weight: 10}
";

    fn rule(load_balancer: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cart, namespace: shop}}\nspec:\n  host: cart\n  trafficPolicy:\n    loadBalancer: {load_balancer}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n{ROUTE}"
        )
    }

    /// A DestinationRule with localityLbSetting or warmup is kept (it once was dropped, and
    /// every VirtualService routing to its subsets with it); a setting that has no effect is a
    /// warning naming the object and the field. Locality failover is applied now: it warns
    /// only without outlierDetection (as Istio, which sets no priorities then).
    #[test]
    fn valid_fields_without_effect_warn_and_nothing_is_dropped() {
        for lb in [
            "{localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}",
            "{localityLbSetting: {distribute: [{from: \"*\", to: {\"*\": 100}}]}}",
            "{warmup: {duration: 60s}}",
            "{simple: RANDOM, warmupDurationSecs: 60s}",
        ] {
            let file = parse_file("cart.yaml", &rule(lb)).unwrap();
            let mesh = MeshConfig::assemble([&file]);
            assert!(mesh.rejected.is_empty(), "{lb}: {:?}", mesh.rejected);
            assert_eq!(mesh.destination_rules().count(), 1, "{lb}");
            assert_eq!(mesh.virtual_services().count(), 1, "{lb}");
            let warned: Vec<String> = mesh.warnings.iter().map(|w| w.to_string()).collect();
            match lb {
                l if l.contains("failover") => {
                    let [w] = &warned[..] else {
                        panic!("{warned:?}")
                    };
                    assert!(
                        w.contains("DestinationRule shop/cart: spec.trafficPolicy.loadBalancer.localityLbSetting"),
                        "{w}"
                    );
                    assert!(w.contains("only with outlierDetection"), "{w}");
                }
                l if l.contains("RANDOM") => {
                    let [w] = &warned[..] else {
                        panic!("{warned:?}")
                    };
                    assert!(
                        w.contains("warmup applies to ROUND_ROBIN and LEAST_REQUEST"),
                        "{w}"
                    );
                }
                _ => assert!(warned.is_empty(), "{warned:?}"),
            }
        }
    }

    /// A route to the subsets of a DestinationRule that was rejected names that rule and why,
    /// instead of claiming no rule defines the subset.
    #[test]
    fn locality_failover_with_outlier_detection_does_not_warn() {
        let text = rule("{localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}").replace(
            "  subsets:",
            "    outlierDetection: {consecutive5xxErrors: 1}\n  subsets:",
        );
        let file = parse_file("cart.yaml", &text).unwrap();
        let mesh = MeshConfig::assemble([&file]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        assert!(mesh.warnings.is_empty(), "{:?}", mesh.warnings);
    }

    /// A Gateway server's `targetPort` (a field of the Port type Istio shares with
    /// ServiceEntry) is kept with a warning instead of dropping the Gateway.
    #[test]
    fn a_gateway_server_target_port_warns() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP, targetPort: 8081}\n    hosts: ['*']\n";
        let mesh = MeshConfig::assemble([&parse_file("gw.yaml", text).unwrap()]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        assert_eq!(mesh.gateways().count(), 1);
        let [w] = &mesh.warnings[..] else {
            panic!("{:?}", mesh.warnings)
        };
        assert!(
            w.to_string()
                .contains("Gateway shop/gw: spec.servers[0].port.targetPort"),
            "{w}"
        );
    }

    /// A client credentialName in a rule without a workloadSelector is kept (gateways use it)
    /// and the sidecars' plaintext is said; with a selector there is nothing to say.
    #[test]
    fn a_credential_name_without_a_selector_is_for_gateways() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ext, namespace: shop}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: MUTUAL, credentialName: client}\n";
        let mesh = MeshConfig::assemble([&parse_file("ext.yaml", text).unwrap()]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        let [w] = &mesh.warnings[..] else {
            panic!("{:?}", mesh.warnings)
        };
        let w = w.to_string();
        assert!(
            w.contains("spec.trafficPolicy.portLevelSettings[0].tls.credentialName: without a workloadSelector it applies at gateways only"),
            "{w}"
        );
        let selected = text.replace(
            "spec:\n",
            "spec:\n  workloadSelector: {matchLabels: {app: a}}\n",
        );
        let mesh = MeshConfig::assemble([&parse_file("ext.yaml", &selected).unwrap()]);
        assert!(
            mesh.rejected.is_empty() && mesh.warnings.is_empty(),
            "{:?}",
            mesh.warnings
        );
    }

    /// `istio.io/dry-run` on a CUSTOM policy: Istio dry-runs ALLOW and DENY only, so the policy
    /// is enforced, and meshd says so; on a DENY policy there is nothing to say.
    #[test]
    fn dry_run_on_a_custom_policy_says_it_is_enforced() {
        let policy = |action: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ext\n  namespace: shop\n  annotations: {{istio.io/dry-run: \"true\"}}\nspec:\n  action: {action}\n  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]\n"
            )
        };
        let custom = policy("CUSTOM\n  provider: {name: ext}");
        let mesh = MeshConfig::assemble([&parse_file("ap.yaml", &custom).unwrap()]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        let [w] = &mesh.warnings[..] else {
            panic!("{:?}", mesh.warnings)
        };
        assert!(
            w.to_string().contains("dry-run applies to ALLOW and DENY policies only (as in Istio); this CUSTOM policy is enforced"),
            "{w}"
        );
        let mesh = MeshConfig::assemble([&parse_file("ap.yaml", &policy("DENY")).unwrap()]);
        assert!(mesh.warnings.is_empty(), "{:?}", mesh.warnings);
    }

    /// An egress proxy must be a service port of the registry (a short host is relative to the
    /// Sidecar's namespace); else its traffic has nowhere to go, and meshd says so.
    #[test]
    fn an_egress_proxy_that_is_no_service_port_warns() {
        let sidecar = |host: &str, port: u32| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\n\
                 spec:\n  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: {{host: {host}, port: {{number: {port}}}}}\n---\n"
            )
        };
        let proxy = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: egress, namespace: shop}\n\
                     spec:\n  hosts: [egress.shop.svc.cluster.local]\n  ports: [{number: 3128, name: tcp, protocol: TCP}]\n  \
                     resolution: DNS\n---\n";
        let warned = |text: String| {
            let mesh = MeshConfig::assemble([&parse_file("sc.yaml", &text).unwrap()]);
            assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
            mesh.warnings
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        };
        assert!(warned(format!("{proxy}{}", sidecar("egress", 3128))).is_empty());
        assert!(
            warned(format!(
                "{proxy}{}",
                sidecar("egress.shop.svc.cluster.local", 3128)
            ))
            .is_empty()
        );
        let [w] = &warned(format!("{proxy}{}", sidecar("egress", 8080)))[..] else {
            panic!("one warning expected")
        };
        assert!(
            w.contains("Sidecar shop/default: spec.outboundTrafficPolicy.egressProxy: no service in the registry has host egress.shop.svc.cluster.local and port 8080"),
            "{w}"
        );
        assert_eq!(warned(sidecar("squid.example.com", 3128)).len(), 1);
    }

    #[test]
    fn a_route_to_a_rejected_rules_subsets_says_it_was_rejected() {
        let file = parse_file("cart.yaml", &rule("{simple: SOMETIMES}")).unwrap();
        let mesh = MeshConfig::assemble([&file]);
        let vs = mesh
            .rejected
            .iter()
            .find(|r| r.kind == Some(crate::Kind::VirtualService))
            .expect("the route is rejected");
        let shown = vs.to_string();
        assert!(
            shown.contains("route to subset `v1` of cart.shop.svc.cluster.local: DestinationRule shop/cart was rejected: spec.trafficPolicy.loadBalancer.simple"),
            "{shown}"
        );
        assert!(shown.contains("SOMETIMES"), "{shown}");
        assert!(!shown.contains("no DestinationRule defines"), "{shown}");
    }
}

//! The AuthorizationPolicy translation table (`xds/src/generate/authz_cases.rs`, whose
//! unit test checks Istio YAML → Envoy RBAC config) driven through real Envoy: for every case
//! with an end-to-end pair, the policy is applied to the server and one request it allows gets
//! 200 while one it denies gets 403 `RBAC: access denied`.

use crate::authz_support;

use authz_support::cases::CASES;
use authz_support::*;

#[test]
fn every_case_allows_and_denies_through_envoy() {
    let w = World::start(
        "aztable",
        Options {
            mtls: "STRICT",
            other: false,
            plain: false,
        },
    );
    // Without a policy, everything the cases deny is allowed: each denial below is the policy's.
    for case in CASES {
        if let Some((_, denied)) = &case.e2e {
            expect(&format!("{} without policy", case.name), &allowed(), || {
                outcome(&w.probe(denied))
            })
            .unwrap();
        }
    }
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in CASES {
        let Some((allow, deny)) = &case.e2e else {
            continue;
        };
        ran += 1;
        let yaml = server_policy(case.name, case.spec);
        w.apply(
            "policy.yaml",
            &yaml,
            &format!("ns[{NS}]-policy[{}]-rule[0]", case.name),
            true,
        );
        let url = World::url;
        for (probe, want) in [(allow, allowed()), (deny, denied())] {
            if let Err(e) = expect(
                &format!(
                    "{}: {} {} from {:?}",
                    case.name,
                    probe.method,
                    url(probe),
                    probe.client
                ),
                &want,
                || outcome(&w.probe(probe)),
            ) {
                failures.push(e.to_string());
            }
        }
    }
    assert!(ran >= 25, "only {ran} cases ran end to end");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! A pod's stats inclusion from its annotations and its ProxyConfig, merged and checked.

use super::*;

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn nothing_said_is_no_matcher() {
    let mut errors = Vec::new();
    assert_eq!(read(&annotations(&[]), None, None, &mut errors), None);
    assert!(errors.is_empty());
}

#[test]
fn annotations_are_comma_lists_merged_with_the_proxy_config() {
    let mut errors = Vec::new();
    let config = from_proxy_config(
        serde_yaml::from_str("{inclusionRegexps: ['.*outlier_detection.*', 'a{1,3}'], inclusionSuffixes: [upstream_rq_timeout]}").unwrap(),
        "proxyStatsMatcher",
    )
    .unwrap();
    let got = read(
        &annotations(&[
            (INCLUSION_PREFIXES, "cluster.outbound, listener"),
            (INCLUSION_SUFFIXES, "upstream_rq_timeout,rbac.allowed"),
        ]),
        None,
        Some(config),
        &mut errors,
    )
    .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(got.inclusion_prefixes, ["cluster.outbound", "listener"]);
    assert_eq!(
        got.inclusion_suffixes,
        ["upstream_rq_timeout", "rbac.allowed"],
        "each pattern once"
    );
    assert_eq!(got.inclusion_regexps, [".*outlier_detection.*", "a{1,3}"]);
}

#[test]
fn a_regexp_envoy_would_refuse_is_an_error_naming_it() {
    let err = from_proxy_config(
        serde_yaml::from_str("{inclusionRegexps: ['(?=look-ahead)']}").unwrap(),
        "proxyStatsMatcher",
    )
    .unwrap_err();
    assert!(
        err.contains("proxyStatsMatcher: inclusionRegexps[0] `(?=look-ahead)` is not a regexp"),
        "{err}"
    );
    let mut errors = Vec::new();
    assert_eq!(
        read(
            &annotations(&[(INCLUSION_REGEXPS, "ok.*,[unclosed")]),
            None,
            None,
            &mut errors
        ),
        None
    );
    assert!(
        errors.len() == 1 && errors[0].contains("inclusionRegexps[1] `[unclosed` is not a regexp"),
        "{errors:?}"
    );
}

#[test]
fn unknown_fields_and_unbounded_lists_are_refused() {
    let err = from_proxy_config(
        serde_yaml::from_str("{inclusionPrefix: [a]}").unwrap(),
        "proxyStatsMatcher",
    )
    .unwrap_err();
    assert!(
        err.contains("not a ProxyStatsMatcher") && err.contains("inclusionPrefix"),
        "{err}"
    );
    let many = (0..65)
        .map(|i| format!("p{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut errors = Vec::new();
    assert_eq!(
        read(
            &annotations(&[(INCLUSION_PREFIXES, &many)]),
            None,
            None,
            &mut errors
        ),
        None
    );
    assert!(errors[0].contains("65 patterns; at most 64"), "{errors:?}");
}

#[test]
fn the_mesh_default_and_the_pods_own_patterns_add_up() {
    let mut errors = Vec::new();
    let mesh = StatsInclusion {
        inclusion_prefixes: vec!["cluster.outbound".into()],
        ..Default::default()
    };
    let got = read(
        &annotations(&[(INCLUSION_SUFFIXES, "upstream_rq_timeout")]),
        Some(mesh.clone()),
        None,
        &mut errors,
    )
    .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(got.inclusion_prefixes, ["cluster.outbound"]);
    assert_eq!(got.inclusion_suffixes, ["upstream_rq_timeout"]);
    // The mesh default alone applies to a pod that says nothing.
    assert_eq!(
        read(&annotations(&[]), Some(mesh.clone()), None, &mut errors),
        Some(mesh)
    );
}

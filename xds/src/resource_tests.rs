//! Unit tests of encoded, shared xDS resources (resource.rs).

use super::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};

fn cluster(name: &str, timeout_s: i64) -> SharedResource {
    Resource::encode(
        name,
        &Cluster {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_s,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
}

fn layer(items: &[(&str, i64)]) -> Layer {
    LayerMap::new(
        items
            .iter()
            .map(|(n, t)| (n.to_string(), cluster(n, *t)))
            .collect(),
    )
}

#[test]
fn encoded_fields_decode_as_the_discovery_messages() {
    let r = cluster("a", 3);
    let mut sotw = r.sotw_field().to_vec();
    sotw.extend(length_delimited(4, CLUSTER.as_bytes()));
    let got = DiscoveryResponse::decode(sotw.as_slice()).unwrap();
    assert_eq!(got.resources, vec![r.any()]);
    assert_eq!(got.resources[0].type_url, CLUSTER);
    let c = Cluster::decode(r.value()).unwrap();
    assert_eq!(c.name, "a");
    assert_eq!(r.size(), r.value().len());

    let delta: Vec<u8> = r.delta_field().iter().flat_map(|b| b.to_vec()).collect();
    let got = DeltaDiscoveryResponse::decode(delta.as_slice()).unwrap();
    assert_eq!(got.resources.len(), 1);
    assert_eq!(got.resources[0].name, "a");
    assert_eq!(got.resources[0].version, r.version);
    assert_eq!(got.resources[0].resource, Some(r.any()));
}

#[test]
fn rebuilt_layers_keep_the_identity_of_what_did_not_change() {
    let old = layer(&[("a", 1), ("b", 1)]);
    let same = reuse_layer(Some(&old), layer(&[("a", 1), ("b", 1)]));
    assert!(
        Arc::ptr_eq(&old, &same),
        "equal content keeps the old layer"
    );

    let changed = reuse_layer(Some(&old), layer(&[("a", 1), ("b", 2), ("c", 1)]));
    assert!(!Arc::ptr_eq(&old, &changed));
    assert!(
        Arc::ptr_eq(&old["a"], &changed["a"]),
        "unchanged resource kept"
    );
    assert!(!Arc::ptr_eq(&old["b"], &changed["b"]));
    assert_ne!(old.version(), changed.version());

    let shrunk = reuse_layer(Some(&old), layer(&[("a", 1)]));
    assert!(!Arc::ptr_eq(&old, &shrunk), "a removal is a change");
    assert!(Arc::ptr_eq(&old["a"], &shrunk["a"]));
}

#[test]
fn set_versions_follow_content_and_subscription() {
    let a = ResourceSet::from_layers(vec![layer(&[("a", 1), ("b", 1)]), layer(&[("c", 1)])]);
    let b = ResourceSet::from_layers(vec![layer(&[("a", 1), ("b", 1)]), layer(&[("c", 1)])]);
    let c = ResourceSet::from_layers(vec![layer(&[("a", 1), ("b", 1)]), layer(&[("c", 2)])]);
    assert_eq!(a.version(&Subscription::All), b.version(&Subscription::All));
    assert_ne!(a.version(&Subscription::All), c.version(&Subscription::All));
    let only_a = Subscription::Names(Arc::new(["a".to_string()].into()));
    assert_eq!(
        a.version(&only_a),
        c.version(&only_a),
        "c differs only outside"
    );
    let mut edited = (*a.layers()[1]).clone();
    edited.insert("d".into(), cluster("d", 1));
    assert_ne!(
        edited.version(),
        a.layers()[1].version(),
        "edit resets version"
    );
}

#[test]
fn layer_chunks_carry_every_resource_in_few_chunks() {
    let items: Vec<(String, i64)> = (0..2000).map(|i| (format!("c{i:04}"), i)).collect();
    let refs: Vec<(&str, i64)> = items.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let l = layer(&refs);
    let chunks = l.sotw_chunks();
    let total: usize = l.values().map(|r| r.sotw_field().len()).sum();
    assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), total);
    assert!(chunks.iter().all(|c| c.len() <= CHUNK_TARGET));
    assert!(
        chunks.len() <= total / (CHUNK_TARGET / 2) + 1,
        "{} chunks",
        chunks.len()
    );
    let body: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let got = DiscoveryResponse::decode(body.as_slice()).unwrap();
    assert_eq!(got.resources.len(), 2000);
    assert_eq!(got.resources[1999], l["c1999"].any());
}

/// A big shared layer keeps its chunks (built once for every proxy); a small layer, one
/// proxy's own, keeps nothing besides its resources; a lone small resource goes by
/// reference.
#[test]
fn only_layers_of_more_than_a_chunk_keep_their_chunks() {
    let items: Vec<(String, i64)> = (0..2000).map(|i| (format!("c{i:04}"), i)).collect();
    let refs: Vec<(&str, i64)> = items.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let big = layer(&refs);
    let (Cow::Borrowed(first), Cow::Borrowed(again)) = (big.delta_chunks(), big.delta_chunks())
    else {
        panic!("a big layer's chunks are kept");
    };
    assert!(std::ptr::eq(first, again));
    let small = layer(&[("a", 1), ("b", 2)]);
    assert!(matches!(small.sotw_chunks(), Cow::Owned(_)));
    assert!(matches!(small.delta_chunks(), Cow::Owned(_)));
    let whole: Vec<u8> = small
        .values()
        .flat_map(|r| r.sotw_field().to_vec())
        .collect();
    assert_eq!(small.sotw_chunks().concat(), whole);
    let lone = layer(&[("a", 1)]);
    let chunks = lone.sotw_chunks();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].as_ptr(), lone["a"].sotw_field().as_ptr());
}

#[test]
fn a_request_matches_its_subscription_exactly() {
    let set = ResourceSet::layer(layer(&[("a", 1), ("b", 1)]));
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(Subscription::All.is_requested_by(&names(&["b", "a"]), &set));
    assert!(!Subscription::All.is_requested_by(&names(&["a"]), &set));
    assert!(!Subscription::All.is_requested_by(&names(&["a", "a"]), &set));
    assert!(!Subscription::All.is_requested_by(&names(&["a", "b", "x"]), &set));
    let sub = Subscription::from_names(["a".to_string()].into(), &set);
    assert!(sub.is_requested_by(&names(&["a"]), &set));
    assert!(sub.is_requested_by(&names(&["a", "a"]), &set));
    assert!(!sub.is_requested_by(&names(&["a", "b"]), &set));
    assert!(!sub.is_requested_by(&names(&[]), &set));
}

#[test]
fn a_request_for_everything_available_is_all_and_anything_else_its_names() {
    let set = ResourceSet::layer(layer(&[("a", 1), ("b", 1)]));
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for exact in [&["a", "b"][..], &["b", "a", "b"]] {
        let sub = Subscription::requested(&names(exact), &set);
        assert_eq!(
            sub,
            Subscription::from_names(names(exact).into_iter().collect(), &set)
        );
        assert_eq!(sub, Subscription::All, "{exact:?}");
    }
    for other in [&["a"][..], &["a", "b", "x"], &["x"]] {
        let sub = Subscription::requested(&names(other), &set);
        assert_eq!(
            sub,
            Subscription::from_names(names(other).into_iter().collect(), &set)
        );
        assert_ne!(sub, Subscription::All, "{other:?}");
    }
    assert_eq!(
        Subscription::requested(&[], &set),
        Subscription::Names(Default::default())
    );
}

#[test]
fn every_served_type_url_is_the_static_one_not_a_leaked_copy() {
    // ECDS resources were once encoded with a leaked copy of their type URL, one per encode:
    // a leak hands out a new address each time, the static the same one.
    for url in PUSH_ORDER {
        let (a, b) = (static_type_url(url), static_type_url(url));
        assert_eq!(a, url);
        assert!(
            std::ptr::eq(a, b),
            "{url} is copied, not kept as the static"
        );
    }
}

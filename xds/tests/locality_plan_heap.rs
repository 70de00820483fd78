//! The heap a locality plan keeps while its snapshot lives (issue 19): with Istio's default
//! `localityLbSetting` every cluster with outlier detection keeps a plan, so at 10 000
//! workloads the decoded endpoints it once held were 28 MB of meshd's idle heap. Its own test
//! binary, because the counting allocator sees the whole process.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::endpoint::v3::{
    Endpoint as EnvoyEndpoint, LbEndpoint, lb_endpoint,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use meshd_model::locality::Locality;
use meshd_model::networking::{Labels, LocalityLbSetting};
use meshd_model::registry::Endpoint;
use meshd_xds::generate::common::socket_address;
use meshd_xds::generate::locality::assignment;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only sizes are counted.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ENDPOINTS: usize = 1000;

/// What cluster generation gives an mTLS endpoint: its address and the `tlsMode` match.
fn lb_endpoint(i: usize) -> LbEndpoint {
    let tls_mode = Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(value::Kind::StringValue("istio".into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(
                &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                8080,
            )),
            ..Default::default()
        })),
        metadata: Some(Metadata {
            filter_metadata: [("envoy.transport_socket_match".to_string(), tls_mode)]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_locality_plan_keeps_its_endpoints_at_their_encoded_size() {
    let endpoints: Vec<Endpoint> = (0..ENDPOINTS)
        .map(|i| Endpoint {
            address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
            ports: Default::default(),
            labels: Labels::new(),
            service_account: "sa".into(),
            namespace: "ns".into(),
            workload: Some(format!("w{i}")),
            weight: None,
            locality: format!("r1/z{}", i % 3),
        })
        .collect();
    let input: Vec<(&Endpoint, LbEndpoint)> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| (e, lb_endpoint(i)))
        .collect();
    // Istio's mesh default: enabled, nothing else; in force with outlier detection.
    let setting = LocalityLbSetting {
        enabled: Some(true),
        ..Default::default()
    };
    let (default_assignment, plan) = assignment("outbound|8080||svc", input, Some(&setting), true);
    let plan = plan.expect("the mesh default with outlier detection makes a plan");
    drop(default_assignment);

    // The plan still gives every endpoint back, as given.
    let proxy = Locality::parse("r1/z1");
    let for_proxy = plan.for_proxy(&proxy, &Labels::new());
    let mut given: Vec<LbEndpoint> = for_proxy
        .endpoints
        .into_iter()
        .flat_map(|l| l.lb_endpoints)
        .collect();
    let address = |e: &LbEndpoint| format!("{:?}", e.host_identifier);
    given.sort_by_key(address);
    let mut expected: Vec<LbEndpoint> = (0..ENDPOINTS).map(lb_endpoint).collect();
    expected.sort_by_key(address);
    assert_eq!(given, expected);
    drop((given, expected));

    let before_drop = LIVE.load(Ordering::Relaxed);
    drop(plan);
    let held = before_drop - LIVE.load(Ordering::Relaxed);
    // Encoded, an endpoint here is ≈ 60 bytes; decoded it was ≈ 1.4 KB.
    assert!(
        held < (ENDPOINTS * 150) as isize,
        "a plan of {ENDPOINTS} endpoints holds {held} bytes"
    );
}

//! Node id parsing and binding: any node id, against any registry record, for a fixed proven
//! identity. Never a panic, and a node is only ever bound to the identity it proved, at the
//! registered workload's own address and type.
//!
//! Input: the node id, then `\n`, then the registry record as `NAME NAMESPACE ADDRESS SA
//! ISTIO-LABEL` (space-separated; missing fields empty).

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_model::registry::Workload;
use meshd_xds::proxy::{Identity, MAX_NODE_ID_LEN, NodeId, NodeType, bind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (node_id, record) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(parsed) = NodeId::parse(node_id) {
        let written = NodeId::format(
            parsed.node_type,
            &parsed.ip,
            &parsed.workload,
            &parsed.namespace,
        );
        // What parses, written back in Istio's layout, parses to the same parts — unless the
        // layout's `cluster.local` made it longer than any id meshd accepts (an id near the
        // limit with a shorter domain: a fuzz-found case, kept as a seed).
        if written.len() <= MAX_NODE_ID_LEN {
            let again = NodeId::parse(&written);
            assert_eq!(again.as_ref().ok(), Some(&parsed), "{node_id:?}");
        } else {
            assert!(NodeId::parse(&written).is_err());
        }
    }
    let mut f = record.split(' ');
    let mut next = || f.next().unwrap_or("").to_string();
    let (name, namespace, address, sa, istio) = (next(), next(), next(), next(), next());
    let workload = Workload {
        name,
        namespace,
        address,
        labels: [("istio".to_string(), istio)].into(),
        service_account: sa,
        ports: Default::default(),
        locality: String::new(),
    };
    let identity = Identity {
        workload: "billing".into(),
        namespace: "ns".into(),
        service_account: "billing".into(),
        trust_domain: "cluster.local".into(),
    };
    for registered in [Some(&workload), None] {
        if let Ok(p) = bind(&identity, node_id, registered) {
            let w = registered.expect("never bound without a registry record");
            assert_eq!(p.identity, identity);
            assert_eq!((w.name.as_str(), w.namespace.as_str()), ("billing", "ns"));
            assert_eq!(w.service_account, "billing");
            assert_eq!(p.node_type, NodeType::of_workload(w));
            let ip = p.ip.as_deref().unwrap_or_default();
            assert!(
                ip == w.address || ip.parse::<std::net::IpAddr>().ok() == w.address.parse().ok(),
                "bound at {ip:?}, registered at {:?}",
                w.address
            );
        }
    }
});

//! Gateway listeners by the address their servers bind to.

use crate::generate::test_fixture::{INGRESS, SERVER, resource, router, snapshot};
use crate::resource::LISTENER;

/// A server with `bind` listens on that address only, in a listener of its own named
/// `<bind>_<port>` as istiod names it; servers without one share `0.0.0.0_<port>`.
#[test]
fn servers_listen_where_they_bind() {
    let yaml = format!(
        r#"{SERVER}---
{INGRESS}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: app}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 8080, name: http-local, protocol: HTTP}}
    hosts: ["*"]
    bind: 127.0.0.1
  - port: {{number: 9000, name: tcp-local, protocol: TCP}}
    hosts: ["*"]
    bind: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: app}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: server.app.svc.cluster.local, port: {{number: 8080}}}}
  tcp:
  - route:
    - destination: {{host: server.app.svc.cluster.local, port: {{number: 9000}}}}
"#
    );
    let snap = snapshot(&yaml);
    let gw = router("ingress", "istio-system");
    for (name, ip, port) in [
        ("0.0.0.0_8080", "0.0.0.0", 8080),
        ("127.0.0.1_8080", "127.0.0.1", 8080),
        ("127.0.0.1_9000", "127.0.0.1", 9000),
    ] {
        let l = resource(&snap, &gw, LISTENER, name);
        let addr = &l["address"]["socket_address"];
        assert_eq!(addr["address"], ip, "{name}");
        assert_eq!(addr["port_value"], port, "{name}");
        assert!(
            !l["filter_chains"].as_array().unwrap().is_empty(),
            "{name} serves its routes: {l:#}"
        );
    }
    let out = snap.generate(&gw);
    assert!(
        out[LISTENER].get("0.0.0.0_9000").is_none(),
        "a bound server is not reachable on every address"
    );
}

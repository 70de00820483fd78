//! Every scalar field kind meshd reads (durations, ports, weights, percentages, counts, CIDRs,
//! regexes, HTTP statuses, label values): the first byte picks a field in a valid mesh, the
//! rest is its value as written in YAML. The document must be accepted or rejected with its
//! field named, and the mesh generated either way, never a panic.
#![no_main]

mod mesh;

use libfuzzer_sys::fuzz_target;

const BASE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  addresses: [10.96.0.30]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-1, namespace: shop}
spec: {address: 10.44.0.30, labels: {app: web, version: v1}, serviceAccount: web}
---
";

/// One document each, `@` standing for the fuzzed value.
const FIELDS: &[&str] = &[
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{timeout: @, route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{retries: {attempts: @, perTryTimeout: 1s}, route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{retries: {attempts: 2, perTryTimeout: @, retryOn: 5xx}, route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{route: [{destination: {host: web, subset: v1}, weight: @}, {destination: {host: web}, weight: 50}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{route: [{destination: {host: web, port: {number: @}}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{match: [{uri: {regex: @}}], route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{match: [{port: @}], route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{fault: {delay: {fixedDelay: 1s, percentage: {value: @}}}, route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{fault: {abort: {httpStatus: @}}, route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{directResponse: {status: @, body: {string: x}}}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{redirect: {uri: /x, redirectCode: @}}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{mirrorPercentage: {value: @}, mirror: {host: web}, route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  http: [{corsPolicy: {maxAge: @}, route: [{destination: {host: web}}]}]\n",
    "kind: VirtualService\nspec:\n  hosts: [web]\n  tcp: [{match: [{port: @}], route: [{destination: {host: web}}]}]\n",
    "kind: DestinationRule\nspec:\n  host: web\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: @, connectTimeout: 1s}}}\n",
    "kind: DestinationRule\nspec:\n  host: web\n  trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: @, interval: @, probes: 3}}}}\n",
    "kind: DestinationRule\nspec:\n  host: web\n  trafficPolicy: {connectionPool: {http: {idleTimeout: @, maxRequestsPerConnection: @}}}\n",
    "kind: DestinationRule\nspec:\n  host: web\n  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3, interval: @, baseEjectionTime: @, maxEjectionPercent: @, minHealthPercent: @}}\n",
    "kind: DestinationRule\nspec:\n  host: web\n  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: @}, minimumRingSize: @}}}\n",
    "kind: DestinationRule\nspec:\n  host: web\n  trafficPolicy: {portLevelSettings: [{port: {number: @}, connectionPool: {tcp: {maxConnections: 1}}}]}\n  subsets: [{name: v1, labels: {version: @}}]\n",
    "kind: ServiceEntry\nspec:\n  hosts: [x.example.com]\n  addresses: [@]\n  ports: [{number: 443, name: tls, protocol: TLS, targetPort: @}]\n  resolution: DNS\n",
    "kind: Sidecar\nspec:\n  workloadSelector: {labels: {app: web}}\n  ingress: [{port: {number: @, protocol: HTTP, name: h}, defaultEndpoint: @}]\n  egress: [{port: {number: @, protocol: HTTP, name: e}, hosts: [./*]}]\n",
    "kind: Gateway\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: @, protocol: HTTP, name: h}, hosts: [@]}]\n",
];

const SECURITY: &[&str] = &[
    "kind: AuthorizationPolicy\nspec:\n  selector: {matchLabels: {app: web}}\n  rules: [{from: [{source: {ipBlocks: [@]}}], to: [{operation: {ports: [@], paths: [@]}}]}]\n",
    "kind: AuthorizationPolicy\nspec:\n  rules: [{when: [{key: destination.port, values: [@]}, {key: source.ip, notValues: [@]}]}]\n",
    "kind: PeerAuthentication\nspec:\n  selector: {matchLabels: {app: web}}\n  portLevelMtls: {@: {mode: DISABLE}}\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((pick, value)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    // One scalar: a line break would start another field.
    let value = value.replace(['\n', '\r'], " ");
    let all = FIELDS.len() + SECURITY.len();
    let index = usize::from(*pick) % all;
    let (group, field) = match index.checked_sub(FIELDS.len()) {
        None => ("networking.istio.io", FIELDS[index]),
        Some(i) => ("security.istio.io", SECURITY[i]),
    };
    let doc = format!(
        "{BASE}apiVersion: {group}/v1\nmetadata: {{name: fuzzed, namespace: shop}}\n{}",
        field.replace('@', &value)
    );
    mesh::run(&doc);
});

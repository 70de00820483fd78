//! One model from a file and from the cluster: every Istio kind, written once as YAML, is created
//! through a real kube-apiserver v1.20.2 (as `kubectl apply` sends it: the YAML read to JSON)
//! and read back by meshd's own watches and index; the objects meshd serves equal the file-mode
//! parse of the same YAML. The YAML holds what once went wrong between the two: an integer-keyed
//! map (PeerAuthentication `portLevelMtls`, whose keys JSON spells as strings) and unquoted IPv6
//! addresses in a flow sequence.

use crate::kube_support;

use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube_support::*;
use meshd::kube::index::IndexOptions;
use meshd::kube::watch::{KubeOutputs, KubeSource, istio_resource};
use meshd_model::{Kind, MeshConfig, document_json, parse_file};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const MESH: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: cart, namespace: shop}
spec:
  selector:
    matchLabels: {app: cart}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
    "9090": {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector:
    matchLabels: {app: cart}
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    timeout: 2s
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: sampling, namespace: shop}
spec:
  selector:
    matchLabels: {app: cart}
  tracing:
  - randomSamplingPercentage: 12.5
    useRequestIdForTraceSampling: false
    customTags:
      team: {literal: {value: shop}}
  accessLogging:
  - filter: {expression: "response.code >= 400"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.example.com]
  addresses: [2001:db8::10, ::ffff:10.0.0.1]
  ports:
  - {number: 8080, name: http, protocol: HTTP, targetPort: 80}
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: "2001:db8::1", ports: {http: 8081}, labels: {version: v1}}
  - {address: 10.0.0.2, weight: 3}
  - {address: "unix:///var/run/legacy.sock"}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop, labels: {app: cart}}
spec:
  address: 10.0.0.7
  ports: {http: 8080}
  labels: {app: cart, version: v2}
  serviceAccount: cart
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {duration: 90s, minimumPercent: 10.5, aggression: 2}
      localityLbSetting:
        failover: [{from: us-east, to: eu-west}]
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 250ms}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
  - match: [{uri: {prefix: /api}, headers: {x-tenant: {exact: acme}}}]
    route:
    - {destination: {host: cart, subset: v1}, weight: 90}
    - {destination: {host: cart, subset: v2}, weight: 10}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset"}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
  - port: {number: 9443, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}
  - port: {number: 8081, name: http-socket, protocol: HTTP, targetPort: 8082}
    hosts: [shop.example.com]
    bind: unix:///var/run/gateway.sock
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress:
  - port: {number: 0, protocol: HTTP, name: http-uds}
    bind: unix:///var/run/mesh/legacy.sock
    hosts: ["./legacy.example.com"]
  - port: {number: 5432, protocol: TCP}
    bind: 127.0.0.2
    captureMode: NONE
    hosts: ["./*"]
  - hosts: ["./*", "istio-system/*"]
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy: {host: legacy.example.com, port: {number: 8080}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart, namespace: shop}
spec:
  selector:
    matchLabels: {app: cart}
  rules:
  - from:
    - source: {serviceAccounts: [shop/web]}
    to:
    - operation: {methods: [GET], ports: ["8080"]}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ratelimit, namespace: shop}
spec:
  workloadSelector:
    labels: {app: cart}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}
"#;

/// Creates one Istio object from its JSON, retrying while its CRD is being established.
async fn create_istio(client: &Client, obj: Value) {
    let kind = Kind::from_name(obj["kind"].as_str().unwrap()).unwrap();
    let ns = obj["metadata"]["namespace"].as_str().unwrap().to_string();
    let mut resource = istio_resource(kind);
    let api_version = obj["apiVersion"].as_str().unwrap();
    resource.version = api_version.rsplit('/').next().unwrap().to_string();
    resource.api_version = api_version.to_string();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
    eventually(20, &format!("{kind} created"), || {
        let api = api.clone();
        let dynamic = dynamic.clone();
        async move {
            match api.create(&PostParams::default(), &dynamic).await {
                Ok(_) => Some(()),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 503 => None,
                Err(e) => panic!("creating {kind} {:?}: {e}", dynamic.metadata.name),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_model_equals_the_file_parse_of_the_same_yaml() {
    let file = parse_file("mesh.yaml", MESH).unwrap();
    let expected = MeshConfig::assemble([&file]);
    assert!(expected.rejected.is_empty(), "{:?}", expected.rejected);
    assert_eq!(expected.objects.len(), Kind::ALL.len(), "every kind once");

    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace("shop", json!({}))).await;
    for crd in istio_crds() {
        create(&client, crd).await;
    }
    for doc in MESH.split("\n---\n") {
        let obj = document_json(doc).expect("each document reads");
        create_istio(&client, obj).await;
    }

    let (mesh_tx, mesh_rx) = tokio::sync::watch::channel(Arc::new(MeshConfig::default()));
    let (namespaces_tx, _namespaces_rx) = tokio::sync::watch::channel(Default::default());
    let (labels_tx, _labels_rx) = tokio::sync::watch::channel(Default::default());
    let _source = KubeSource::start(
        client.clone(),
        IndexOptions::default(),
        meshd::debounce::Debounce {
            quiet: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        Duration::from_secs(30),
        KubeOutputs {
            mesh: mesh_tx,
            injection_namespaces: namespaces_tx,
            namespace_labels: labels_tx,
            reg_events: Default::default(),
        },
    )
    .await
    .expect("meshd's watches sync against the API server");
    let cluster = mesh_rx.borrow().clone();

    let shop_rejections: Vec<String> = cluster
        .rejected
        .iter()
        .filter(|r| r.namespace.as_deref() == Some("shop"))
        .map(|r| r.to_string())
        .collect();
    assert!(shop_rejections.is_empty(), "{shop_rejections:#?}");
    let served: Vec<_> = cluster
        .objects
        .keys()
        .filter(|k| k.namespace == "shop")
        .collect();
    let written: Vec<_> = expected.objects.keys().collect();
    assert_eq!(served, written);
    for (key, want) in &expected.objects {
        let got = &cluster.objects[key];
        assert_eq!(got.spec, want.spec, "{key}: spec");
        assert_eq!(got.meta, want.meta, "{key}: metadata");
        assert_eq!(got.api_version, want.api_version, "{key}: apiVersion");
    }
    // The two the old path lost, checked by value too.
    let pa = cluster
        .peer_authentications()
        .find(|(o, _)| o.meta.name == "cart")
        .unwrap()
        .1;
    assert_eq!(
        pa.port_level_mtls.keys().copied().collect::<Vec<_>>(),
        [8080, 9090]
    );
    let se = cluster.service("legacy.example.com").expect("served");
    assert_eq!(se.addresses, ["2001:db8::10", "::ffff:10.0.0.1"]);
    // The accepted-but-not-applied field is said so, from the cluster as from the file.
    assert_eq!(
        cluster
            .warnings
            .iter()
            .map(|w| w.reason.clone())
            .collect::<Vec<_>>(),
        expected
            .warnings
            .iter()
            .map(|w| w.reason.clone())
            .collect::<Vec<_>>()
    );
}

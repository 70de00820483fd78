//! `meshd kube-inject`: golden outputs for each workload kind (regenerate with
//! `MESHD_UPDATE_GOLDEN=1`), the same pod the webhook would produce for each, and the CLI's
//! stdin/`-o` plumbing. No root, no network.

use meshd::kube_inject::inject_manifests;
use meshd_injector::{InjectConfig, Labels, ResponseExt, inject};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const KINDS: [&str; 7] = [
    "deployment",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "pod",
    "replicaset",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube-inject")
}

fn cfg() -> InjectConfig {
    InjectConfig {
        inject_unknown_namespaces: true,
        ..InjectConfig::for_namespace("meshd-system")
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn golden_output_for_each_kind() {
    let update = std::env::var_os("MESHD_UPDATE_GOLDEN").is_some();
    for kind in KINDS {
        let input = std::fs::read_to_string(dir().join(format!("{kind}.yaml"))).unwrap();
        let out = inject_manifests(&input, &cfg()).unwrap();
        let golden_path = dir().join(format!("{kind}.injected.yaml"));
        if update {
            std::fs::write(&golden_path, &out).unwrap();
        }
        let golden = std::fs::read_to_string(&golden_path).unwrap_or_else(|_| {
            panic!(
                "no {}: run with MESHD_UPDATE_GOLDEN=1",
                golden_path.display()
            )
        });
        assert_eq!(
            out, golden,
            "{kind}: kube-inject output differs from the golden file"
        );
    }
}

/// The pod template of a workload document, and the workload's name.
fn template(doc: &Value) -> Option<(Value, String)> {
    let t = match doc["kind"].as_str()? {
        "Pod" => json!({"metadata": doc["metadata"], "spec": doc["spec"]}),
        "CronJob" => doc.pointer("/spec/jobTemplate/spec/template")?.clone(),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.pointer("/spec/template")?.clone()
        }
        _ => return None,
    };
    Some((t, doc["metadata"]["name"].as_str()?.to_string()))
}

/// What the webhook makes of the pod a controller creates from `template`.
fn webhook_pod(template: &Value, name: &str, namespace: &str) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
    if pod["metadata"].is_null() {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["name"].as_str().is_none().then(|| {
        pod["metadata"]["name"] = json!(name);
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": namespace, "operation": "CREATE", "object": pod},
    });
    let resp = inject(&review, &cfg(), &|_| -> Option<Labels> { None });
    assert!(resp.allowed, "{:?}", resp.result);
    let mut out = pod.clone();
    if let Some(ops) = resp.patch_ops() {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut out, &patch).unwrap();
    }
    out
}

#[test]
fn kube_inject_makes_the_pod_the_webhook_makes() {
    let mut compared = 0;
    for kind in KINDS {
        let input = std::fs::read_to_string(dir().join(format!("{kind}.yaml"))).unwrap();
        let out = inject_manifests(&input, &cfg()).unwrap();
        for (before, after) in docs(&input).iter().zip(docs(&out)) {
            let Some((t, name)) = template(before) else {
                assert_eq!(before, &after, "{kind}: a non-workload document changed");
                continue;
            };
            let namespace = before["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            let webhook = webhook_pod(&t, &name, namespace);
            let (mut offline, _) = template(&after).unwrap();
            // The controller names the pod; the template has no name.
            if t["metadata"]["name"].is_null() {
                offline["metadata"]["name"] = json!(name);
            }
            assert_eq!(
                offline["metadata"], webhook["metadata"],
                "{kind}/{name}: metadata"
            );
            assert_eq!(offline["spec"], webhook["spec"], "{kind}/{name}: spec");
            compared += 1;
        }
    }
    assert_eq!(compared, 8);
}

#[test]
fn skipped_pods_and_other_documents_pass_through() {
    let input = std::fs::read_to_string(dir().join("pod.yaml")).unwrap();
    let out = docs(&inject_manifests(&input, &cfg()).unwrap());
    assert_eq!(out.len(), 2);
    assert!(out[0]["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
    assert_eq!(out[1], docs(&input)[1], "the opted-out pod is untouched");
    let err =
        inject_manifests("kind: Deployment\nmetadata: {name: x}\nspec: {}\n", &cfg()).unwrap_err();
    assert!(
        format!("{err:#}").contains("Deployment default/x: has no pod template"),
        "{err:#}"
    );
    let err = inject_manifests(
        "kind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n",
        &cfg(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("spec.containers is not a list"),
        "{err:#}"
    );
}

#[test]
fn cli_reads_stdin_and_writes_the_output_file() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("out.yaml");
    let input = std::fs::read_to_string(dir().join("job.yaml")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["kube-inject", "-f", "-", "-o"])
        .arg(&out_path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let written = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(written, inject_manifests(&input, &cfg()).unwrap());
    // A native-sidecar rendering on request (what a >= 1.29 server's webhook produces).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["kube-inject", "--native-sidecars", "-f"])
        .arg(dir().join("job.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = &docs(&String::from_utf8(out.stdout).unwrap())[0];
    let inits = &job["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(inits[2]["name"], "istio-proxy");
    assert_eq!(inits[2]["restartPolicy"], "Always");
}

/// istioctl kube-inject reads the mesh's defaults from `--meshConfigFile`; so does meshd's, with
/// the server's `--mesh-config` file: the pods get what the webhook of that server gives them.
#[test]
fn cli_takes_the_mesh_default_config_from_the_mesh_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = tmp.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "defaultConfig:\n  terminationDrainDuration: 11s\n  proxyMetadata: {ISTIO_DELTA_XDS: \"false\"}\n",
    )
    .unwrap();
    let run = |extra: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(["kube-inject", "-f"])
            .arg(dir().join("job.yaml"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--meshConfigFile".as_ref(), mesh.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = &docs(&String::from_utf8(out.stdout).unwrap())[0];
    let spec = &job["spec"]["template"]["spec"];
    let proxy = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("a sidecar");
    assert_eq!(
        proxy["lifecycle"]["preStop"]["exec"]["command"][5],
        "11000ms"
    );
    let bootstrap = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "meshd-bootstrap")
        .expect("the bootstrap init container");
    assert!(
        bootstrap["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "ISTIO_DELTA_XDS" && e["value"] == "false"),
        "{bootstrap}"
    );
    std::fs::write(
        &mesh,
        "defaultConfig: {holdApplicationUntilProxyStarts: often}\n",
    )
    .unwrap();
    let out = run(&["--mesh-config".as_ref(), mesh.as_os_str()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("defaultConfig: holdApplicationUntilProxyStarts: `often` is not a boolean"),
        "{stderr}"
    );
}

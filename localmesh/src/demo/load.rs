//! The demo's steady background traffic, so the dashboard's graph is alive: every call the
//! shipped AuthorizationPolicies allow between the VoiceCore workloads (read from the mesh
//! config: a policy's selected workloads are called by the principals it names), plus the
//! ingress gateway's routes; about one request per call per second, a few of them failing
//! on purpose so error rates show.

use super::DemoPlan;
use crate::mesh::LocalMesh;
use meshd_model::{Kind, MeshConfig};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One call the load makes: from a sidecar pod (its workload `name.namespace`), or from the
/// node namespace when `from` is `None` (the ingress gateway's clients).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub from: Option<String>,
    pub url: String,
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// The calls the mesh's ALLOW policies permit between the demo's service pods, and one per
/// gateway route.
pub fn calls(config: &MeshConfig, plan: &DemoPlan) -> Vec<Call> {
    let mut out = Vec::new();
    for o in config.objects.values() {
        if o.kind() != Kind::AuthorizationPolicy {
            continue;
        }
        let spec = serde_json::to_value(&o.spec).unwrap_or_default();
        if spec["action"].as_str().is_some_and(|a| a != "ALLOW") {
            continue;
        }
        let Some(selector) = spec["selector"]["matchLabels"].as_object() else {
            continue;
        };
        let ns = o.meta.namespace();
        let selected = |w: &meshd_model::registry::Workload| {
            w.namespace == ns
                && selector
                    .iter()
                    .all(|(k, v)| w.labels.get(k).map(String::as_str) == v.as_str())
        };
        let targets: Vec<_> = plan
            .services
            .iter()
            .filter(|s| {
                config
                    .workloads
                    .iter()
                    .any(|w| w.id() == s.workload && selected(w))
            })
            .collect();
        let principals: Vec<&str> = spec["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["from"].as_array().into_iter().flatten())
            .flat_map(|f| strings(&f["source"]["principals"]))
            .collect();
        for principal in principals {
            let callers = config.workloads.iter().filter(|w| {
                principal.ends_with(&format!("/ns/{}/sa/{}", w.namespace, w.service_account))
                    && plan.services.iter().any(|s| s.workload == w.id())
            });
            for caller in callers {
                for t in &targets {
                    out.push(Call {
                        from: Some(caller.id()),
                        url: format!("http://{}:{}/demo", t.host, t.port),
                    });
                }
            }
        }
    }
    if let Some(gw) = plan.gateways.first() {
        for r in &plan.routes {
            out.push(Call {
                from: None,
                url: format!("http://{}:{}{}", gw.address, gw.port, r.prefix),
            });
        }
    }
    out.sort_by(|a, b| (&a.from, &a.url).cmp(&(&b.from, &b.url)));
    out.dedup();
    out
}

/// Runs the calls until dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(mesh: Arc<LocalMesh>, calls: Vec<Call>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let running = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut round: u64 = 0;
            while !running.load(Ordering::Relaxed) {
                for (i, c) in calls.iter().enumerate() {
                    if running.load(Ordering::Relaxed) {
                        return;
                    }
                    // One request in about 25 answers 503, for an error rate on the graph.
                    let fail = (round + i as u64).is_multiple_of(25);
                    let sep = if c.url.contains('?') { '&' } else { '?' };
                    let url = if fail {
                        format!("{}{sep}status=503", c.url)
                    } else {
                        c.url.clone()
                    };
                    let pod = match &c.from {
                        Some(w) => mesh
                            .sidecars()
                            .into_iter()
                            .find(|p| &p.workload == w)
                            .map(|p| p.pod),
                        None => Some(mesh.node()),
                    };
                    if let Some(pod) = pod {
                        // Failures are part of the picture (a denied or broken call shows as
                        // errors on its edge), never a reason to stop.
                        let _ = pod.get(&url);
                    }
                }
                round += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

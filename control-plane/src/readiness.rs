//! Readiness per subsystem. Each subsystem registers a guard when the process starts and drops it
//! once it serves (the CA loaded, the first config read, a listener accepting); the process is
//! ready when no guard is held. `/healthz/ready` names the subsystems still waited for, so a
//! pod that never turns ready says why. A supervised task that is down counts separately
//! (`TaskHealth`): restarts do not register new guards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The subsystems not yet ready, by name (a name may be registered more than once).
#[derive(Debug, Default)]
pub struct Readiness {
    pending: Mutex<BTreeMap<&'static str, usize>>,
}

/// Held by a subsystem until it is ready; dropping it says so.
#[must_use = "dropping the guard marks the subsystem ready at once"]
#[derive(Debug)]
pub struct ReadyGuard {
    readiness: Arc<Readiness>,
    name: &'static str,
}

impl Readiness {
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness::default())
    }

    /// A guard for `name`: the process is not ready until it is dropped.
    pub fn register(self: &Arc<Self>, name: &'static str) -> ReadyGuard {
        *self.lock().entry(name).or_default() += 1;
        ReadyGuard {
            readiness: self.clone(),
            name,
        }
    }

    /// The subsystems still waited for, sorted.
    pub fn pending(&self) -> Vec<&'static str> {
        self.lock().keys().copied().collect()
    }

    pub fn is_ready(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, usize>> {
        // A panic while holding this lock cannot leave the map half-updated (one statement).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReadyGuard {
    /// Marks the subsystem ready (the same as dropping the guard; reads better at the call).
    pub fn ready(self) {}
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        let mut pending = self.readiness.lock();
        if let Some(count) = pending.get_mut(self.name) {
            *count -= 1;
            if *count == 0 {
                pending.remove(self.name);
            }
        }
    }
}

/// `/healthz/ready`'s answer: (ready, text). A down task is named before a subsystem that has
/// not started, since it is the likelier cause of a long wait.
pub fn verdict(readiness: &Readiness, down: &[&str]) -> (bool, String) {
    if !down.is_empty() {
        return (
            false,
            format!("not ready: {} restarting\n", down.join(", ")),
        );
    }
    let pending = readiness.pending();
    if pending.is_empty() {
        (true, "ready\n".to_string())
    } else {
        (
            false,
            format!("not ready: waiting for {}\n", pending.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_guard_of_every_subsystem_is_dropped() {
        let r = Readiness::new();
        let ca = r.register("ca");
        let xds_plain = r.register("xds");
        let xds_tls = r.register("xds");
        assert_eq!(r.pending(), ["ca", "xds"]);
        assert_eq!(
            verdict(&r, &[]),
            (false, "not ready: waiting for ca, xds\n".into())
        );
        ca.ready();
        drop(xds_plain);
        assert_eq!(
            r.pending(),
            ["xds"],
            "one of two xds listeners still binding"
        );
        assert!(!r.is_ready());
        drop(xds_tls);
        assert!(r.is_ready());
        assert_eq!(verdict(&r, &[]), (true, "ready\n".into()));
    }

    #[test]
    fn a_down_task_makes_a_ready_process_unready() {
        let r = Readiness::new();
        let (ready, text) = verdict(&r, &["xds-server"]);
        assert!(!ready);
        assert_eq!(text, "not ready: xds-server restarting\n");
    }

    #[test]
    fn a_guard_released_by_unwinding_does_not_poison_readiness() {
        let r = Readiness::new();
        let guard = r.register("config");
        let other = r.register("admin");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = guard;
            panic!("subsystem failed while starting");
        }));
        assert_eq!(r.pending(), ["admin"]);
        drop(other);
        assert!(r.is_ready());
    }
}

//! Supervision of the server's long-lived tasks (config source, snapshot builder, servers, CA
//! upkeep): a task that panics or fails is logged, counted, and started again after an
//! exponential backoff, while readiness says it is down. One bad object must never end the
//! process; only a task that cannot be started again (its one-time resources are gone) does.

use futures::FutureExt;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Waits between a task's end and its next start: `initial`, doubling per consecutive
/// failure, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait before the start that follows `failures` consecutive failures (1 or more).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TaskState {
    running: bool,
    /// Ended for good (returned `Ok` before shutdown): not down, nothing to restart.
    finished: bool,
    restarts: u64,
    /// A failure the task survived and reported (e.g. a config it could not build), until it
    /// succeeds again.
    error: Option<String>,
}

/// Which supervised tasks run, and how often each was restarted: for readiness and /metrics.
#[derive(Debug, Default)]
pub struct TaskHealth {
    tasks: Mutex<BTreeMap<&'static str, TaskState>>,
}

impl TaskHealth {
    fn update(&self, task: &'static str, f: impl FnOnce(&mut TaskState)) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        f(tasks.entry(task).or_default());
    }

    /// Tasks that should run and do not (waiting out a backoff, or given up).
    pub fn down(&self) -> Vec<&'static str> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .filter(|(_, s)| !s.running && !s.finished)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Records a failure the task survived (it keeps running): shown by `/debug/configz`.
    pub fn report_error(&self, task: &'static str, error: String) {
        self.update(task, |s| s.error = Some(error));
    }

    pub fn clear_error(&self, task: &'static str) {
        self.update(task, |s| s.error = None);
    }

    /// The failures tasks survived and have not recovered from, by task.
    pub fn errors(&self) -> BTreeMap<&'static str, String> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .filter_map(|(name, s)| Some((*name, s.error.clone()?)))
            .collect()
    }

    pub fn all_up(&self) -> bool {
        self.down().is_empty()
    }

    pub fn restarts(&self, task: &str) -> u64 {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(task).map_or(0, |s| s.restarts)
    }

    /// `meshd_task_restarts_total` and `meshd_task_up`, one series per task (a fixed set).
    pub fn write_metrics(&self, out: &mut String) {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(
            out,
            "# HELP meshd_task_restarts_total Restarts of a supervised task after it panicked or failed.\n# TYPE meshd_task_restarts_total counter"
        );
        for (task, s) in &tasks {
            let _ = writeln!(
                out,
                "meshd_task_restarts_total{{task=\"{task}\"}} {}",
                s.restarts
            );
        }
        let _ = writeln!(
            out,
            "# HELP meshd_task_up Whether a supervised task runs (1), or is down waiting to restart (0).\n# TYPE meshd_task_up gauge"
        );
        for (task, s) in &tasks {
            let up = u8::from(s.running || s.finished);
            let _ = writeln!(out, "meshd_task_up{{task=\"{task}\"}} {up}");
        }
    }
}

/// A task that cannot be started again: the process has to end.
#[derive(Debug)]
pub struct GaveUp {
    pub task: &'static str,
}

/// The set of supervised tasks.
pub struct Supervisor {
    set: JoinSet<()>,
    health: Arc<TaskHealth>,
    backoff: Backoff,
    stop: watch::Receiver<bool>,
    gave_up_tx: mpsc::UnboundedSender<GaveUp>,
    gave_up: mpsc::UnboundedReceiver<GaveUp>,
}

/// A caught panic's message, for the log and for reports.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

impl Supervisor {
    /// Tasks stop being restarted once `stop` turns true.
    pub fn new(backoff: Backoff, stop: watch::Receiver<bool>) -> Supervisor {
        let (gave_up_tx, gave_up) = mpsc::unbounded_channel();
        Supervisor {
            set: JoinSet::new(),
            health: Arc::new(TaskHealth::default()),
            backoff,
            stop,
            gave_up_tx,
            gave_up,
        }
    }

    pub fn health(&self) -> Arc<TaskHealth> {
        self.health.clone()
    }

    /// Runs `start()`'s future, and again after each panic or error. `start` returns `None`
    /// when the task cannot run again; the supervisor then gives up on it ([`Self::gave_up`]).
    /// A task that returns `Ok` has finished for good.
    pub fn spawn<F, Fut>(&mut self, task: &'static str, mut start: F)
    where
        F: FnMut() -> Option<Fut> + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let health = self.health.clone();
        let backoff = self.backoff;
        let mut stop = self.stop.clone();
        let gave_up = self.gave_up_tx.clone();
        health.update(task, |s| s.running = false);
        self.set.spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let Some(run) = start() else {
                    tracing::error!(task, "cannot restart this task");
                    let _ = gave_up.send(GaveUp { task });
                    return;
                };
                health.update(task, |s| s.running = true);
                let ended = AssertUnwindSafe(run).catch_unwind().await;
                health.update(task, |s| s.running = false);
                if *stop.borrow() {
                    return;
                }
                match ended {
                    Ok(Ok(())) => {
                        health.update(task, |s| s.finished = true);
                        return;
                    }
                    Ok(Err(e)) => tracing::error!(task, error = %format!("{e:#}"), "task failed"),
                    Err(panic) => tracing::error!(
                        task,
                        panic = %panic_text(&*panic),
                        "task panicked"
                    ),
                }
                failures = failures.saturating_add(1);
                let delay = backoff.delay(failures);
                tracing::warn!(task, ?delay, failures, "restarting after backoff");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                health.update(task, |s| s.restarts += 1);
            }
        });
    }

    /// Resolves when a task could not be restarted.
    pub async fn gave_up(&mut self) -> GaveUp {
        match self.gave_up.recv().await {
            Some(g) => g,
            // The supervisor holds a sender itself: never closed.
            None => std::future::pending().await,
        }
    }

    /// Waits for every task to end (they end once `stop` is true), at most `deadline`;
    /// then cuts what remains.
    pub async fn join(mut self, deadline: Duration) {
        let cut = tokio::time::timeout(deadline, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if cut.is_err() {
            tracing::warn!("drain deadline passed; cutting remaining tasks");
            self.set.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        };
        let delays: Vec<Duration> = (1..=12).map(|n| b.delay(n)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[2], Duration::from_millis(400));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(delays[11], Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    /// A task that panics twice is restarted twice, counted, and then runs; readiness and the
    /// metric say so.
    #[tokio::test]
    async fn a_task_that_panics_twice_is_restarted_and_then_runs() {
        let (stop_tx, stop) = watch::channel(false);
        let mut sup = Supervisor::new(fast(), stop);
        let health = sup.health();
        let starts = Arc::new(AtomicU32::new(0));
        let (running_tx, mut running) = mpsc::unbounded_channel();
        let counter = starts.clone();
        let stop_task = stop_tx.subscribe();
        sup.spawn("flaky", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let running = running_tx.clone();
            let mut stop = stop_task.clone();
            Some(async move {
                if n < 2 {
                    panic!("bad object {n}");
                }
                let _ = running.send(());
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            })
        });
        running.recv().await.expect("the third start runs");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(health.restarts("flaky"), 2);
        assert!(health.all_up(), "{:?}", health.down());
        let mut metrics = String::new();
        health.write_metrics(&mut metrics);
        assert!(
            metrics.contains("meshd_task_restarts_total{task=\"flaky\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("meshd_task_up{task=\"flaky\"} 1"),
            "{metrics}"
        );
        stop_tx.send_replace(true);
        sup.join(Duration::from_secs(5)).await;
    }

    /// While a task waits out its backoff it is down (not ready), and counted as such.
    #[tokio::test]
    async fn a_task_waiting_to_restart_is_down() {
        let (stop_tx, stop) = watch::channel(false);
        let mut sup = Supervisor::new(
            Backoff {
                initial: Duration::from_secs(3600),
                max: Duration::from_secs(3600),
            },
            stop,
        );
        let health = sup.health();
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        sup.spawn("broken", move || {
            let ended = ended_tx.clone();
            Some(async move {
                let _ = ended.send(());
                anyhow::bail!("cannot read the config")
            })
        });
        ended.recv().await.unwrap();
        // The failure is recorded right after the future ends: wait for that state change.
        while health.all_up() {
            tokio::task::yield_now().await;
        }
        assert_eq!(health.down(), ["broken"]);
        let mut metrics = String::new();
        health.write_metrics(&mut metrics);
        assert!(
            metrics.contains("meshd_task_up{task=\"broken\"} 0"),
            "{metrics}"
        );
        stop_tx.send_replace(true);
        sup.join(Duration::from_secs(5)).await;
    }

    /// A task with nothing left to run ends for good; one that cannot start again is reported.
    #[tokio::test]
    async fn finished_tasks_are_up_and_unrestartable_ones_give_up() {
        let (_stop_tx, stop) = watch::channel(false);
        let mut sup = Supervisor::new(fast(), stop);
        let health = sup.health();
        sup.spawn("one-shot", || Some(async { Ok(()) }));
        let mut first = Some(async { anyhow::bail!("listener closed") });
        sup.spawn("server", move || first.take());
        let g = sup.gave_up().await;
        assert_eq!(g.task, "server");
        assert_eq!(health.restarts("server"), 1);
        assert_eq!(health.down(), ["server"]);
    }
}

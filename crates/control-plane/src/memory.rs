//! Returning freed heap to the OS after bursts of pushes.
//!
//! A connect storm or a full push allocates and frees hundreds of MB within seconds (responses
//! queued per stream, decode buffers), and each config change frees the last snapshot and the
//! config it was built from. glibc keeps freed pages in its per-thread arenas, so the process
//! would stay at its peak for good; once pushes and rebuilds have gone quiet, it is asked to
//! release them.

use std::time::Duration;
use tokio::sync::watch;

/// Calls `trim` (in production, [`trim`]) once `activity` (a counter that moves with each push
/// and each snapshot rebuild) has stood still for `quiet` after having moved. Ends at shutdown.
pub async fn trim_after_bursts(
    activity: impl Fn() -> u64,
    quiet: Duration,
    mut stop: watch::Receiver<bool>,
    mut trim: impl FnMut() -> bool,
) {
    let mut seen = activity();
    let mut dirty = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(quiet) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = activity();
        if now != seen {
            seen = now;
            dirty = true;
        } else if dirty {
            dirty = false;
            let started = std::time::Instant::now();
            let released = trim();
            tracing::debug!(
                released,
                elapsed_us = started.elapsed().as_micros() as u64,
                "heap trimmed after pushes or rebuilds"
            );
        }
    }
}

/// Returns free heap pages to the OS; whether any were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only returns free pages of glibc's arenas to the kernel; it takes
    // the arenas' locks itself and may be called from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn trims_once_after_pushes_go_quiet_and_stops_on_shutdown() {
        let pushed = Arc::new(AtomicU64::new(0));
        let activity = pushed.clone();
        let (stop_tx, stop) = watch::channel(false);
        let trims = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = trims.clone();
        let task = tokio::spawn(trim_after_bursts(
            move || activity.load(Ordering::SeqCst),
            Duration::from_secs(1),
            stop,
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                true
            },
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(trims.load(Ordering::SeqCst), 0, "no pushes, no trim");
        for _ in 0..4 {
            pushed.fetch_add(1 << 20, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        assert_eq!(trims.load(Ordering::SeqCst), 0, "not while pushes go on");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1, "once after they stop");
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ends at shutdown")
            .unwrap();
    }

    #[test]
    fn trimming_the_real_heap_is_harmless() {
        let big: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1 << 16]).collect();
        drop(big);
        trim();
    }
}

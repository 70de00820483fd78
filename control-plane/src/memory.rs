//! The allocator's settings and figures, and returning freed heap to the OS after bursts.
//!
//! A connect storm or a full push allocates and frees hundreds of MB within seconds (responses
//! queued per stream, decode buffers), and each config change frees the last snapshot and the
//! config it was built from. jemalloc's background thread returns pages a second after they are
//! freed; once pushes and rebuilds have gone quiet, every arena is also purged at once, so RSS
//! follows live state rather than the last peak.

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

/// jemalloc's settings, read by it at start (the `malloc_conf` symbol, as jemalloc documents):
/// a background thread returns pages freed for over a second, so memory follows the load down
/// without waiting for the next allocation; a setting jemalloc cannot read aborts at start.
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals, unsafe_code)]
pub static malloc_conf: &[u8; 59] = b"background_thread:true,dirty_decay_ms:1000,abort_conf:true\0";

/// Returns every arena's free pages to the OS now; whether jemalloc did.
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` takes and returns nothing: both pointers
    // null, lengths zero, as jemalloc's mallctl documents for it.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        ) == 0
    }
}

/// Heap bytes the program holds and bytes of memory jemalloc has resident (heap, its metadata,
/// pages not yet returned).
pub fn heap_stats() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some((
        stats::allocated::read().ok()? as u64,
        stats::resident::read().ok()? as u64,
    ))
}

/// jemalloc's statistics report, as text.
pub fn heap_report() -> std::io::Result<String> {
    let mut out = Vec::new();
    tikv_jemalloc_ctl::stats_print::stats_print(&mut out, Default::default())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
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
    fn jemalloc_runs_with_our_settings_and_reports_the_heap() {
        assert!(
            tikv_jemalloc_ctl::opt::background_thread::read().unwrap(),
            "malloc_conf was read"
        );
        #[allow(unsafe_code)]
        // SAFETY: `opt.dirty_decay_ms` is an ssize_t, read as isize.
        let decay = unsafe { tikv_jemalloc_ctl::raw::read::<isize>(b"opt.dirty_decay_ms\0") };
        assert_eq!(decay.unwrap(), 1000);
        let big: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1 << 16]).collect();
        let (allocated, resident) = heap_stats().unwrap();
        assert!(allocated >= 64 << 16, "{allocated}");
        assert!(resident >= allocated, "{resident} < {allocated}");
        drop(big);
        assert!(trim(), "the purge was accepted");
        let report = heap_report().unwrap();
        assert!(report.contains("Allocated:"), "{report}");
    }
}

//! How config changes are batched before a rebuild: a burst ends after a quiet period, and a
//! steady stream of changes (a rolling restart, endpoint churn) still publishes at a bounded
//! interval instead of waiting for a quiet moment that never comes.

use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// A burst ends when no change arrives for this long.
    pub quiet: Duration,
    /// ... or this long after its first change, whichever is first.
    pub max: Duration,
}

impl Debounce {
    /// The next burst of changes: waits for the first, then takes more until the burst ends.
    /// `None` once the channel is closed and empty.
    pub async fn burst<T>(&self, rx: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
        let first = rx.recv().await?;
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + self.max;
        loop {
            let wait = self
                .quiet
                .min(until.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(c)) => batch.push(c),
                Ok(None) | Err(_) => return Some(batch),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Debounce = Debounce {
        quiet: Duration::from_millis(100),
        max: Duration::from_millis(300),
    };

    #[tokio::test(start_paused = true)]
    async fn a_burst_ends_after_the_quiet_period() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(D.burst(&mut rx).await, Some(vec![1, 2]));
        assert_eq!(started.elapsed(), D.quiet);
    }

    /// A change every 40 ms never leaves 100 ms of quiet: the burst still ends at `max`.
    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_still_publishes_at_max() {
        let (tx, mut rx) = mpsc::channel(16);
        let writer = tokio::spawn(async move {
            for i in 0.. {
                if tx.send(i).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let batch = D.burst(&mut rx).await.unwrap();
        assert_eq!(started.elapsed(), D.max);
        assert_eq!(batch, (0..=7).collect::<Vec<_>>());
        // The next burst starts with the change at 320 ms and ends `max` after it.
        let next = D.burst(&mut rx).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(320) + D.max);
        assert!(!next.is_empty());
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_ends_the_bursts() {
        let (tx, mut rx) = mpsc::channel::<u8>(1);
        tx.send(7).await.unwrap();
        drop(tx);
        assert_eq!(D.burst(&mut rx).await, Some(vec![7]));
        assert_eq!(D.burst(&mut rx).await, None);
    }
}

//! The snapshot's build-once caches. Many proxies of one shape connect (or reconnect) in the
//! same instant after a push: each shared piece must be built once and the others wait for it,
//! rather than every stream building its own copy under the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A cache entry built once even when many proxies ask for it at the same moment.
pub(super) type Once<T> = Arc<OnceLock<T>>;

/// The entries of a build-once cache that were built.
pub(super) fn built<K: Clone + Eq + std::hash::Hash, V: Clone>(
    cache: &Mutex<HashMap<K, Once<V>>>,
) -> HashMap<K, V> {
    cache
        .lock()
        .expect("snapshot cache")
        .iter()
        .filter_map(|(k, v)| v.get().map(|v| (k.clone(), v.clone())))
        .collect()
}

/// The value for `key`, built by `build` on the first call; concurrent callers wait for it
/// rather than build it again.
pub(super) fn get_or_build<K: Clone + Eq + std::hash::Hash, V: Clone>(
    cache: &Mutex<HashMap<K, Once<V>>>,
    key: K,
    build: impl FnOnce(&K) -> V,
) -> V {
    let cell = cache
        .lock()
        .expect("snapshot cache")
        .entry(key.clone())
        .or_default()
        .clone();
    cell.get_or_init(|| build(&key)).clone()
}

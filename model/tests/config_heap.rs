//! The heap config keeps while it serves (issue 19): a file's document cache beside the objects
//! it read, and the objects themselves. Its own test binary, because the counting allocator sees
//! the whole process; the tests take turns (`MEASURING`) so one does not count the other's.

use meshd_model::{DocumentCache, parse_file_cached};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};

static MEASURING: Mutex<()> = Mutex::new(());

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only sizes are counted.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const DOCUMENTS: usize = 1000;

fn workload_entry(i: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: svc-{i}-{i}\n  namespace: ns-{ns}\nspec:\n  address: 10.100.{a}.{b}\n  labels:\n    app: svc-{i}\n    version: v1\n  serviceAccount: svc-{i}\n",
        ns = i % 10,
        a = i / 250,
        b = i % 250 + 1,
    )
}

fn workload_entries() -> String {
    (0..DOCUMENTS)
        .map(workload_entry)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// What the cache keeps once the objects it read belong to the caller too: its own entries,
/// not the file's text again. It held each document's text as its key and a full-size entry
/// per document, a second copy of every config file (≈ 3 MB of meshd's idle heap at 1000
/// services).
#[test]
fn the_cache_keeps_a_digest_per_document_not_its_text() {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let text = workload_entries();
    let mut cache = DocumentCache::default();
    let read = parse_file_cached("workloads.yaml", &text, &mut cache).expect("the file reads");
    assert_eq!(read.objects.len(), DOCUMENTS, "{:?}", read.rejected);
    let with_cache = LIVE.load(Ordering::Relaxed);
    drop(cache);
    let cache_bytes = with_cache - LIVE.load(Ordering::Relaxed);
    let per_document = cache_bytes / DOCUMENTS as isize;
    // A digest, a line and a pointer per document, in a table at most half empty (116 today).
    // Keyed by the text with full-size entries it was ≈ 570 (the text alone is ≈ 200 here).
    assert!(
        per_document <= 160,
        "the cache keeps {cache_bytes} bytes for {DOCUMENTS} documents ({per_document} each); the text is {} bytes",
        text.len()
    );
    // The cache still answers: the same text again is read from it, the same objects.
    let mut cache = DocumentCache::default();
    let first = parse_file_cached("workloads.yaml", &text, &mut cache).expect("reads");
    let again = parse_file_cached("workloads.yaml", &text, &mut cache).expect("reads");
    assert!(
        first
            .objects
            .iter()
            .zip(&again.objects)
            .all(|(a, b)| std::sync::Arc::ptr_eq(a, b)),
        "an unchanged document is not parsed again"
    );
}

/// The heap each of `DOCUMENTS` objects keeps once parsed (the cache dropped), `document(i)`
/// being the i-th; every document must be accepted.
fn bytes_per_object(document: impl Fn(usize) -> String) -> isize {
    let text = (0..DOCUMENTS)
        .map(document)
        .collect::<Vec<_>>()
        .join("---\n");
    let before = LIVE.load(Ordering::Relaxed);
    let read = parse_file_cached("objects.yaml", &text, &mut DocumentCache::default())
        .expect("the file reads");
    assert_eq!(read.objects.len(), DOCUMENTS, "{:?}", read.rejected);
    (LIVE.load(Ordering::Relaxed) - before) / DOCUMENTS as isize
}

/// What a parsed WorkloadEntry with two labels and one named port keeps: its labels and ports
/// as small sorted vectors. As B-trees, each map's first node alone was ≈ 300–540 bytes
/// (1300 bytes in all; 564 now).
#[test]
fn a_workload_entry_keeps_its_labels_and_ports_small() {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let per_object = bytes_per_object(|i| {
        workload_entry(i).replace("  labels:", "  ports: {http: 8080}\n  labels:")
    });
    assert!(
        per_object <= 900,
        "a WorkloadEntry keeps {per_object} bytes"
    );
}

/// What a parsed DestinationRule with a subset and a connection pool keeps: its traffic policies
/// boxed, so a rule is not four policies wide (≈ 760 bytes each) whether it has them or not
/// (1987 bytes in all inline; 1243 boxed).
#[test]
fn a_destination_rule_keeps_only_the_policies_it_has() {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let per_object = bytes_per_object(|i| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc-{i}\n  namespace: ns-{ns}\nspec:\n  host: svc-{i}.ns-{ns}.svc.cluster.local\n  trafficPolicy:\n    connectionPool: {{tcp: {{maxConnections: 100}}}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n",
            ns = i % 10
        )
    });
    assert!(
        per_object <= 1500,
        "a DestinationRule keeps {per_object} bytes"
    );
}

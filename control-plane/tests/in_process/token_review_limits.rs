//! What unknown bearer tokens may cost in Kubernetes mode, against a fake API server that holds
//! every TokenReview until the test lets it answer: at most the concurrency limit in flight,
//! and a token the API server refused is not reviewed again while its refusal is cached.

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use meshd::kube::token::{ReviewLimits, TokenReviewAuth};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Reviews the fake received, in flight now, and at most at once; answers once `open`.
struct Fake {
    arrived: watch::Sender<usize>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    open: watch::Sender<bool>,
}

async fn review(State(fake): State<Arc<Fake>>, body: axum::Json<Value>) -> axum::Json<Value> {
    use std::sync::atomic::Ordering::SeqCst;
    let now = fake.in_flight.fetch_add(1, SeqCst) + 1;
    fake.max_in_flight.fetch_max(now, SeqCst);
    fake.arrived.send_modify(|n| *n += 1);
    let _ = fake.open.subscribe().wait_for(|o| *o).await;
    fake.in_flight.fetch_sub(1, SeqCst);
    axum::Json(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {},
        "spec": body.0["spec"].clone(),
        "status": {"authenticated": false, "error": "invalid bearer token"}
    }))
}

const GUARD: Duration = Duration::from_secs(60);

#[tokio::test]
async fn unknown_tokens_are_reviewed_at_most_limit_at_once_and_refusals_are_cached() {
    let fake = Arc::new(Fake {
        arrived: watch::Sender::new(0),
        in_flight: Default::default(),
        max_in_flight: Default::default(),
        open: watch::Sender::new(false),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/apis/authentication.k8s.io/v1/tokenreviews", post(review))
        .with_state(fake.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    const LIMIT: usize = 4;
    const FLOOD: usize = 40;
    let auth = Arc::new(
        TokenReviewAuth::new(client, "istio-ca", "cluster.local").with_limits(&ReviewLimits {
            concurrency: LIMIT,
            negative_ttl: Duration::from_secs(3600),
        }),
    );

    // A flood of distinct unknown tokens.
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.review(&format!("unknown-{i}")).await })
        })
        .collect();
    // Settled: LIMIT reviews at the API server, every other one waiting its turn in meshd.
    let mut arrived = fake.arrived.subscribe();
    tokio::time::timeout(GUARD, arrived.wait_for(|n| *n >= LIMIT))
        .await
        .expect("reviews reach the API server")
        .unwrap();
    tokio::time::timeout(GUARD, async {
        while auth.reviews_waiting() + *fake.arrived.borrow() < FLOOD {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every review is either at the API server or waiting");
    assert_eq!(
        *fake.arrived.borrow(),
        LIMIT,
        "only {LIMIT} reviews in flight"
    );
    assert_eq!(auth.reviews_waiting(), FLOOD - LIMIT);
    fake.open.send_replace(true);
    for r in flood {
        let e = r.await.unwrap().expect_err("unknown tokens are refused");
        assert!(e.contains("invalid bearer token"), "{e}");
    }
    assert_eq!(*fake.arrived.borrow(), FLOOD);
    assert!(
        fake.max_in_flight.load(std::sync::atomic::Ordering::SeqCst) <= LIMIT,
        "at most {LIMIT} TokenReviews at once"
    );

    // A refused token presented again, once and many times at once: no new review.
    for _ in 0..10 {
        let e = auth.review("unknown-7").await.unwrap_err();
        assert!(e.contains("invalid bearer token"), "{e}");
    }
    let again: Vec<_> = (0..20)
        .map(|_| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.review("unknown-0").await })
        })
        .collect();
    for r in again {
        assert!(r.await.unwrap().is_err());
    }
    assert_eq!(
        *fake.arrived.borrow(),
        FLOOD,
        "refusals answered from the negative cache"
    );
    // A new bad token presented by many at once costs one review (the others find its
    // refusal once their turn comes).
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let auth = auth.clone();
            tokio::spawn(async move { auth.review("another-unknown").await })
        })
        .collect();
    for r in burst {
        assert!(r.await.unwrap().is_err());
    }
    assert!(
        *fake.arrived.borrow() <= FLOOD + LIMIT,
        "{} reviews for one token",
        *fake.arrived.borrow() - FLOOD
    );
    server.abort();
}

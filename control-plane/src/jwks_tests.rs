//! The JWKS fetcher against a local HTTP server: keys reach the published config, a bad fetch
//! keeps the last good keys and says why, bodies are bounded, OpenID discovery, timeouts.

use super::*;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::sync::Mutex;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

/// What the server answers on `/keys`; `/discovery` points at it; `/hang` never answers.
type Answer = Arc<Mutex<(StatusCode, String)>>;

async fn server(answer: Answer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let discovery = format!(r#"{{"issuer":"x","jwks_uri":"{base}/keys"}}"#);
    let app = Router::new()
        .route(
            "/keys",
            get(move || {
                let answer = answer.clone();
                async move { answer.lock().unwrap().clone() }
            }),
        )
        .route(
            "/i/.well-known/openid-configuration",
            get(move || async move { discovery }),
        )
        .route("/hang", get(std::future::pending::<String>));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn config(rules: &str) -> Arc<MeshConfig> {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r, namespace: a}}\nspec: {{jwtRules: [{rules}]}}\n"
    );
    let file = meshd_model::parse_file("ra.yaml", &text).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    Arc::new(MeshConfig::assemble([&file]))
}

/// Waits for the published config to satisfy `ready`.
async fn published(
    rx: &mut watch::Receiver<Arc<MeshConfig>>,
    ready: impl Fn(&MeshConfig) -> bool,
) -> Arc<MeshConfig> {
    loop {
        let now = rx.borrow_and_update().clone();
        if ready(&now) {
            return now;
        }
        rx.changed().await.unwrap();
    }
}

#[tokio::test]
async fn keys_reach_the_config_and_a_bad_fetch_keeps_the_last_good_ones() {
    let answer: Answer = Arc::new(Mutex::new((StatusCode::OK, JWKS.to_string())));
    let base = server(answer.clone()).await;
    let at = JwksLocation::Uri(format!("{base}/keys"));
    let (raw_tx, raw) = watch::channel(config(&format!("{{issuer: i, jwksUri: '{base}/keys'}}")));
    let (out, mut rx) = watch::channel(Arc::new(MeshConfig::default()));
    let metrics = Arc::new(JwksMetrics::default());
    let opts = FetchOptions {
        refresh: Duration::from_millis(50),
        retry: Duration::from_millis(50),
        ..Default::default()
    };
    let task = tokio::spawn(run(raw, out, metrics.clone(), opts));
    let first = published(&mut rx, |c| {
        c.jwks.get(&at).is_some_and(|f| f.keys.is_some())
    })
    .await;
    assert_eq!(first.jwks[&at].keys.as_deref(), Some(JWKS));
    assert_eq!(status(&first)[0]["keys"], true);

    *answer.lock().unwrap() = (StatusCode::OK, r#"{"keys":[{"kty":"RSA"}]}"#.into());
    let failed = published(&mut rx, |c| {
        c.jwks.get(&at).is_some_and(|f| f.error.is_some())
    })
    .await;
    let error = failed.jwks[&at].error.clone().unwrap();
    assert!(error.contains("not a JWK set: keys[0].n"), "{error}");
    assert_eq!(
        failed.jwks[&at].keys.as_deref(),
        Some(JWKS),
        "last good keys kept"
    );
    assert!(metrics.failed.get() >= 1);
    assert!(
        status(&failed)[0]["error"]
            .as_str()
            .unwrap()
            .contains("keys[0].n")
    );

    *answer.lock().unwrap() = (StatusCode::SERVICE_UNAVAILABLE, String::new());
    let down = published(&mut rx, |c| {
        c.jwks[&at]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("503"))
    })
    .await;
    assert_eq!(down.jwks[&at].keys.as_deref(), Some(JWKS));

    *answer.lock().unwrap() = (StatusCode::OK, JWKS.into());
    published(&mut rx, |c| c.jwks[&at].error.is_none()).await;
    assert!(metrics.fetched.get() >= 2);

    // The rule goes: so do its keys.
    raw_tx.send_replace(Arc::new(MeshConfig::default()));
    published(&mut rx, |c| c.jwks.is_empty()).await;
    drop(raw_tx);
    task.await.unwrap();
}

#[tokio::test]
async fn bodies_are_bounded_and_discovery_finds_the_set() {
    let answer: Answer = Arc::new(Mutex::new((StatusCode::OK, "x".repeat(4096))));
    let base = server(answer.clone()).await;
    let client = reqwest::Client::new();
    let keys = JwksLocation::Uri(format!("{base}/keys"));
    let e = fetch(&client, &keys, Duration::from_secs(30), 1024)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { max: 1024, .. }), "{e}");

    *answer.lock().unwrap() = (StatusCode::OK, JWKS.into());
    let discovery = JwksLocation::Discovery(format!("{base}/i/.well-known/openid-configuration"));
    let got = fetch(&client, &discovery, Duration::from_secs(30), 1 << 20)
        .await
        .unwrap();
    assert_eq!(got, JWKS);

    let missing = JwksLocation::Discovery(format!("{base}/keys"));
    let e = fetch(&client, &missing, Duration::from_secs(30), 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::NoJwksUri { .. }), "{e}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let base = server(Arc::new(Mutex::new((StatusCode::OK, String::new())))).await;
    let client = reqwest::Client::new();
    let e = fetch(
        &client,
        &JwksLocation::Uri(format!("{base}/hang")),
        Duration::from_millis(100),
        1 << 20,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn a_config_without_fetched_keys_passes_through_unchanged() {
    let raw_config = config(&format!("{{issuer: i, jwks: '{JWKS}'}}"));
    let (raw_tx, raw) = watch::channel(raw_config.clone());
    let (out, rx) = watch::channel(Arc::new(MeshConfig::default()));
    let task = tokio::spawn(run(
        raw,
        out,
        Arc::new(JwksMetrics::default()),
        FetchOptions::default(),
    ));
    let mut rx = rx;
    let got = published(&mut rx, |c| !c.objects.is_empty()).await;
    assert!(
        Arc::ptr_eq(&got, &raw_config),
        "no copy when nothing is fetched"
    );
    drop(raw_tx);
    task.await.unwrap();
}

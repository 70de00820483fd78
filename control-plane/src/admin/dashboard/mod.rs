//! The read-only web dashboard on the admin port (`/dashboard/`), behind the admin API's
//! access guard like `/debug/*`: the mesh as a live graph, one page per workload, and the
//! config page. The page and its scripts are embedded in the binary and load nothing from
//! elsewhere (a Content-Security-Policy of `'self'` says so to the browser); live updates are
//! server-sent events computed from the telemetry's state and the config channel.

pub mod graph;
pub mod open;
pub mod workload;

use crate::admin::AdminState;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::routing::get;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// How often a live page gets fresh numbers.
const TICK: Duration = Duration::from_secs(2);

/// Path under the admin port.
pub const PATH: &str = "/dashboard/";

const ASSETS: [(&str, &str, &str); 4] = [
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    ),
    (
        "graph.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/graph.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/pages.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
];

const INDEX: &str = include_str!("assets/index.html");

/// Nothing but this origin: no CDN, no inline script, no framing.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The dashboard's routes, to be merged into the admin router (inside its guard).
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/dashboard", get(|| async { Redirect::permanent(PATH) }))
        .route("/dashboard/", get(index))
        .route("/dashboard/assets/{file}", get(asset))
        .route("/dashboard/api/graph", get(graph_now))
        .route("/dashboard/api/config", get(config_now))
        .route(
            "/dashboard/api/workload/{namespace}/{name}",
            get(workload_now),
        )
        .route("/dashboard/events", get(events))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

fn graph_value(s: &AdminState, history: Option<&mut graph::History>) -> serde_json::Value {
    let snap = s.snapshots.borrow().clone();
    let now = s.mesh_metrics.edges();
    let g = match history {
        Some(h) => {
            let before = h.push(Instant::now(), now.clone());
            graph::build(snap.config(), &now, before)
        }
        None => graph::build(snap.config(), &now, None),
    };
    serde_json::to_value(g).unwrap_or_default()
}

async fn graph_now(State(s): State<AdminState>) -> Json<serde_json::Value> {
    Json(graph_value(&s, None))
}

async fn config_now(State(s): State<AdminState>) -> Response {
    crate::admin::configz(State(s)).await.into_response()
}

async fn workload_now(
    State(s): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match workload::detail(&s, &name, &namespace) {
        Some(v) => Json(v).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no workload {name}.{namespace} in the registry\n"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct Topics {
    /// Comma-separated: `graph`, `config`.
    #[serde(default)]
    topics: String,
    /// `NAMESPACE/NAME`: that workload's page data on every tick.
    workload: Option<String>,
}

/// What one live page asked for.
struct Live {
    state: AdminState,
    graph: Option<graph::History>,
    config: bool,
    workload: Option<(String, String)>,
    ticker: tokio::time::Interval,
    snapshots: tokio::sync::watch::Receiver<std::sync::Arc<meshd_xds::MeshSnapshot>>,
    first: bool,
}

fn event(name: &str, data: &serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

impl Live {
    async fn next(&mut self) -> Vec<Event> {
        let config_changed = if self.first {
            self.first = false;
            self.snapshots.borrow_and_update();
            true
        } else {
            tokio::select! {
                _ = self.ticker.tick() => false,
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        // The server is going away; keep ticking until the connection ends.
                        self.ticker.tick().await;
                        false
                    } else {
                        self.snapshots.borrow_and_update();
                        true
                    }
                }
            }
        };
        let mut out = Vec::new();
        if let Some(history) = self.graph.as_mut() {
            out.push(event("graph", &graph_value(&self.state, Some(history))));
        }
        if self.config && config_changed {
            let v = crate::admin::configz(State(self.state.clone())).await.0;
            out.push(event("config", &v));
        }
        if let Some((ns, name)) = &self.workload {
            let v = workload::detail(&self.state, name, ns).unwrap_or(serde_json::Value::Null);
            out.push(event("workload", &v));
        }
        out
    }
}

async fn events(
    State(s): State<AdminState>,
    Query(q): Query<Topics>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let topics: Vec<&str> = q.topics.split(',').map(str::trim).collect();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    let live = Live {
        snapshots: s.snapshots.clone(),
        state: s,
        graph: topics.contains(&"graph").then(graph::History::default),
        config: topics.contains(&"config"),
        workload: q
            .workload
            .as_deref()
            .and_then(|w| w.split_once('/'))
            .map(|(ns, n)| (ns.to_string(), n.to_string())),
        ticker,
        first: true,
    };
    let stream = stream::unfold(live, |mut live| async move {
        let batch = live.next().await;
        Some((stream::iter(batch.into_iter().map(Ok)), live))
    })
    .flatten();
    Sse::new(stream).keep_alive(KeepAlive::default())
}

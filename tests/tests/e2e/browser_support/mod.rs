//! Real headless Chromium for the dashboard tests: Debian's `chromium` driven by its
//! `chromedriver` (WebDriver, through `fantoccini`), both started inside a pod's network
//! namespace so the browser reaches what that namespace reaches (the control plane's admin
//! port on the node's loopback). Collects the browser's console log and saves screenshots
//! under `target/test-artifacts/`. A missing browser fails the test with the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use meshd_e2e::*;
use serde_json::{Value, json};

const DRIVER_PORT: u16 = 9515;

/// Where screenshots go: `target/test-artifacts/` of this workspace (or `CARGO_TARGET_DIR`).
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artifacts");
    dir
}

/// `chromium` and `chromedriver` as Debian installs them (scripts/install-tools.sh).
fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "`{tool}` is not installed: the dashboard test needs Debian's chromium and \
         chromium-driver (scripts/install-tools.sh installs them)"
    );
}

/// `POST /session/{id}/se/log {"type": "browser"}`: chromedriver's console log (entries since
/// the last call).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// chromedriver in `pod`, and the browser session the test drives (all calls from a thread in
/// the pod's namespace, see [`Browser::run`]).
pub struct Browser {
    _driver: Child,
    pod: Pod,
    profile: tempfile::TempDir,
}

impl Browser {
    pub fn start(pod: &Pod) -> Browser {
        let driver = require("chromedriver");
        require("chromium");
        let child = pod
            .spawn([
                driver.to_string_lossy().as_ref(),
                &format!("--port={DRIVER_PORT}"),
                "--allowed-ips=127.0.0.1",
            ])
            .expect("starting chromedriver");
        let ready = wait_until(Duration::from_secs(30), || {
            pod.get(&format!("http://127.0.0.1:{DRIVER_PORT}/status"))
                .is_ok_and(|(s, body)| s == 200 && body.contains("\"ready\":true"))
        });
        assert!(
            ready,
            "chromedriver did not answer /status: {}",
            child.log_tail()
        );
        Browser {
            _driver: child,
            pod: pod.clone(),
            profile: tempfile::tempdir().expect("a browser profile dir"),
        }
    }

    /// Runs `f` with a fresh Chromium session, from a thread inside the pod's namespace.
    pub fn run<T: Send>(&self, f: impl AsyncFnOnce(&Session) -> T + Send) -> T {
        let profile = self.profile.path().to_path_buf();
        self.pod
            .in_netns(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    let caps = json!({
                        "goog:chromeOptions": {
                            "binary": require("chromium"),
                            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                     "--disable-dev-shm-usage", "--window-size=1366,900",
                                     "--no-first-run", "--no-default-browser-check",
                                     format!("--user-data-dir={}", profile.display())],
                        },
                        "goog:loggingPrefs": {"browser": "ALL"},
                    });
                    let serde_json::Value::Object(caps) = caps else {
                        unreachable!()
                    };
                    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                    let client = ClientBuilder::new(connector)
                        .capabilities(caps)
                        .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
                        .await
                        .expect("a Chromium session from chromedriver");
                    let session = Session { client };
                    let out = f(&session).await;
                    let _ = session.client.close().await;
                    out
                })
            })
            .expect("entering the pod's namespace")
    }
}

pub struct Session {
    pub client: Client,
}

impl Session {
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigating");
    }

    /// Runs `script` (a function body; `return` its value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something other than null/false (its value), or fails
    /// after `deadline` with `what` and the last value.
    pub async fn wait_for(&self, what: &str, deadline: Duration, script: &str) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let v = self.eval(script).await;
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if Instant::now() > end {
                let shot = self.screenshot(&format!("failed-{}", slug(what))).await;
                panic!("{what}: not in the page within {deadline:?} (screenshot {shot:?})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG screenshot as `target/test-artifacts/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }

    /// The console entries logged since the last call, as `LEVEL message`.
    pub async fn console(&self) -> Vec<String> {
        let v = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("chromedriver's browser log");
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// Fails when the console has any error since the last call.
    pub async fn assert_no_console_errors(&self, page: &str) {
        let bad: Vec<String> = self
            .console()
            .await
            .into_iter()
            .filter(|l| l.starts_with("SEVERE"))
            .collect();
        assert!(
            bad.is_empty(),
            "console errors on the {page} page: {bad:#?}"
        );
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

use super::*;
use std::net::TcpListener;
use std::thread;

/// A server on port 0 answering each connection with the next of `answers` (raw bytes), then
/// closing; the connections it served are counted.
fn server(answers: Vec<&'static [u8]>) -> (String, thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz/ready", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut served = 0;
        for answer in answers {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut chunk).unwrap();
                assert!(n > 0, "{:?}", String::from_utf8_lossy(&request));
                request.extend_from_slice(&chunk[..n]);
            }
            assert!(
                request.starts_with(b"GET /healthz/ready HTTP/1.1\r\n"),
                "{:?}",
                String::from_utf8_lossy(&request)
            );
            // The client may stop reading (the endless answer): a broken pipe here is fine.
            let _ = conn.write_all(answer);
            served += 1;
        }
        served
    });
    (url, handle)
}

#[test]
fn waits_through_not_ready_answers_until_a_2xx() {
    let (url, server) = server(vec![
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        b"garbage that is not HTTP\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ]);
    wait_ready(&url, Duration::from_secs(30), Duration::from_millis(10)).unwrap();
    assert_eq!(server.join().unwrap(), 3);
}

#[test]
fn gives_up_at_the_timeout_saying_what_envoy_answered_last() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz/ready", listener.local_addr().unwrap());
    let answering = thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut request = [0u8; 512];
            let _ = conn.read(&mut request);
            if conn
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .is_err()
            {
                break;
            }
        }
    });
    let err = wait_ready(&url, Duration::from_millis(300), Duration::from_millis(50)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, WaitError::NotReady { .. }), "{text}");
    assert!(text.contains("HTTP 503") && text.contains(&url), "{text}");
    drop(answering);
}

#[test]
fn a_port_nobody_listens_on_is_not_ready() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/healthz/ready");
    let err = wait_ready(&url, Duration::ZERO, Duration::from_millis(10)).unwrap_err();
    assert!(matches!(err, WaitError::NotReady { .. }), "{err}");
}

#[test]
fn an_endless_answer_is_read_no_further_than_the_head_limit() {
    let (url, server) = server(vec![&[b'x'; 64 * 1024]]);
    let parsed = HttpUrl::parse(&url).unwrap();
    let err = status(&parsed, Duration::from_secs(5)).unwrap_err();
    assert!(err.starts_with("not an HTTP status line"), "{err}");
    assert_eq!(server.join().unwrap(), 1);
}

#[test]
fn only_plain_http_urls_with_a_port_are_taken() {
    assert_eq!(
        HttpUrl::parse("http://127.0.0.1:15021/healthz/ready").unwrap(),
        HttpUrl {
            authority: "127.0.0.1:15021".into(),
            path: "/healthz/ready".into()
        }
    );
    assert_eq!(HttpUrl::parse("http://[::1]:15021").unwrap().path, "/");
    for bad in [
        "https://127.0.0.1:15021/",
        "http://127.0.0.1/ready",
        "http://user@127.0.0.1:1/",
        "http://127.0.0.1:1/a b",
        "http://127.0.0.1:1/a\r\nX: y",
        "",
    ] {
        assert!(
            matches!(HttpUrl::parse(bad), Err(WaitError::Url { .. })),
            "{bad}"
        );
    }
}

#[test]
fn status_lines_and_timeouts_parse_strictly() {
    assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
    assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Ok(503));
    assert!(parse_status_line(b"HTTP/2 200\r\n").is_err());
    assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n").is_err());
    assert!(parse_status_line(b"").is_err());
    assert_eq!(parse_timeout("120s"), Some(Duration::from_secs(120)));
    assert_eq!(parse_timeout("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_timeout("7"), Some(Duration::from_secs(7)));
    assert_eq!(parse_timeout("1500ms"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_timeout("-1s"), None);
    assert_eq!(parse_timeout("99999999999999999999m"), None);
}

/// One connection's request head, answered with `answer`.
fn admin(answer: &'static [u8]) -> (String, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 512];
        while !request.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut chunk).unwrap();
            assert!(n > 0);
            request.extend_from_slice(&chunk[..n]);
        }
        conn.write_all(answer).unwrap();
        String::from_utf8(request).unwrap()
    });
    (url, handle)
}

#[test]
fn drain_posts_the_inbound_graceful_drain_then_holds_the_hook_for_the_duration() {
    let (url, envoy) = admin(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nOK\n");
    let started = std::time::Instant::now();
    drain(&format!("{url}/"), Duration::from_millis(300)).unwrap();
    // The hook's whole point is the wait: Envoy gets SIGTERM only after it.
    assert!(started.elapsed() >= Duration::from_millis(300));
    let request = envoy.join().unwrap();
    assert!(
        request.starts_with("POST /drain_listeners?inboundonly&graceful HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("Content-Length: 0\r\n"), "{request}");
}

#[test]
fn a_refused_or_missing_drain_still_holds_the_hook_and_says_why() {
    let (url, envoy) = admin(b"HTTP/1.1 404 Not Found\r\n\r\n");
    let started = std::time::Instant::now();
    let err = drain(&url, Duration::from_millis(200)).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(matches!(err, WaitError::DrainRefused { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    envoy.join().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = drain(&format!("http://127.0.0.1:{port}"), Duration::ZERO).unwrap_err();
    assert!(matches!(err, WaitError::DrainRefused { .. }), "{err}");
}

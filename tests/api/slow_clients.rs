//! Clients that send slowly, or not at all, hold nothing for long; and a method a path
//! does not declare is 405 with `Allow` (RFC 9110).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp, assert_error, spawn_app_with};

async fn app_with_short_timeouts() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.http_timeouts.header_timeout = Duration::from_secs(1);
        s.http_timeouts.body_timeout = Duration::from_secs(1);
    })
    .await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or 5 s pass); what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .map(|()| String::from_utf8_lossy(&seen).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = app_with_short_timeouts().await;
    let mut stream = connect(&app).await;
    let started = Instant::now();
    stream
        .write_all(b"POST /oauth/token HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    // One byte now and then: never the end of the headers.
    let mut trickle = stream;
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            if trickle.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickle
    });
    let mut stream = writer.await.unwrap();
    let waited = started.elapsed();
    assert!(
        read_until_closed(&mut stream).await.is_some(),
        "the connection was still open after {:?}",
        started.elapsed()
    );
    assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
    // The server is still serving everyone else.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_is_disconnected() {
    let app = app_with_short_timeouts().await;
    let mut silent = connect(&app).await;
    let started = Instant::now();
    assert!(
        read_until_closed(&mut silent).await.is_some(),
        "a silent connection was still open after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // One byte of what could be an HTTP/2 preface, then nothing: the same.
    let mut preface = connect(&app).await;
    preface.write_all(b"P").await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut preface).await.is_some());
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408() {
    let app = app_with_short_timeouts().await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /oauth/token HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
              grant_type",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut stream)
        .await
        .expect("the server answered and closed the connection");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_method_is_405_with_allow() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    for (method, path, allow) in [
        (reqwest::Method::GET, "/oauth/token".to_owned(), "POST"),
        (reqwest::Method::DELETE, "/oauth/token".to_owned(), "POST"),
        (
            reqwest::Method::PUT,
            format!("/v1/sessions/{}", uuid::Uuid::new_v4()),
            "DELETE",
        ),
        (
            reqwest::Method::POST,
            "/.well-known/jwks.json".to_owned(),
            "GET, HEAD",
        ),
        (
            reqwest::Method::DELETE,
            "/openapi.json".to_owned(),
            "GET, HEAD",
        ),
    ] {
        let resp = app
            .http
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some(allow.to_owned()),
            "{method} {path}"
        );
        assert_error(
            resp,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        )
        .await;
    }
}

//! The agent's HTTP routes for flows and explanations, next to the health routes of
//! `agent`:
//!
//! - `GET /flows[?pod=NS/NAME&namespace=NS&verdict=allowed|dropped&port=N&last=N]`: the
//!   recent flows, oldest first, one JSON object per line (NDJSON);
//! - `GET /flows?follow=1[&...]`: the last `last` (default 0) matching flows, then every new
//!   one as it comes, until the client goes;
//! - `GET /explain?src=..&dst=..&port=N&proto=tcp|udp|sctp|icmp`: which rules allow or deny
//!   that connection (JSON, see [`crate::explain::Explanation`]); `src` and `dst` are
//!   addresses or `namespace/name` of pods.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;

use crate::flows::{FlowFilter, FlowRecord};
use crate::observer::{ExplainError, Observer};

/// Serves `target` (path and query) on `stream` if it is one of this module's routes;
/// returns `false`, having written nothing, otherwise.
pub async fn serve(observer: &Observer, target: &str, stream: &mut TcpStream) -> bool {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = parse_query(query);
    match path {
        "/flows" if param(&params, "follow").is_some_and(|v| v != "0") => {
            follow(observer, &params, stream).await;
        }
        "/flows" => {
            let (code, body) = recent(observer, &params);
            reply(stream, code, "application/x-ndjson", &body).await;
        }
        "/explain" => {
            let (code, ctype, body) = explain(observer, &params);
            reply(stream, code, ctype, &body).await;
        }
        _ => return false,
    }
    true
}

fn recent(observer: &Observer, params: &[(String, String)]) -> (&'static str, String) {
    let (filter, last) = match filter_and_last(params) {
        Ok(v) => v,
        Err(e) => return ("400 Bad Request", format!("{e}\n")),
    };
    let mut body = String::new();
    for r in observer.flows().recent(&filter, last) {
        push_line(&mut body, &r);
    }
    ("200 OK", body)
}

/// Streams flows until the client closes its side or a write fails.
async fn follow(observer: &Observer, params: &[(String, String)], stream: &mut TcpStream) {
    let (filter, last) = match filter_and_last(params) {
        Ok(v) => v,
        Err(e) => return reply(stream, "400 Bad Request", "text/plain", &format!("{e}\n")).await,
    };
    let (snapshot, mut feed) = observer.flows().follow(&filter, last.unwrap_or(0));
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: \
                no-cache\r\nConnection: close\r\n\r\n";
    let mut body = head.to_owned();
    for r in &snapshot {
        push_line(&mut body, r);
    }
    if stream.write_all(body.as_bytes()).await.is_err() {
        return;
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            next = feed.recv() => match next {
                Ok(r) if filter.matches(&r) => {
                    let mut line = String::new();
                    push_line(&mut line, &r);
                    if stream.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // A follower that reads too slowly misses flows; the `seq` gap shows it.
                Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "slow /flows follower"),
                Err(RecvError::Closed) => return,
            },
            // The client sends nothing more after its request: a read that ends means it left.
            read = stream.read(&mut scratch) => if matches!(read, Ok(0) | Err(_)) {
                return;
            },
        }
    }
}

fn explain(
    observer: &Observer,
    params: &[(String, String)],
) -> (&'static str, &'static str, String) {
    let (Some(src), Some(dst)) = (param(params, "src"), param(params, "dst")) else {
        return (
            "400 Bad Request",
            "text/plain",
            "src and dst are required\n".into(),
        );
    };
    let proto = param(params, "proto").unwrap_or("tcp");
    let port = match (proto.to_ascii_lowercase().as_str(), param(params, "port")) {
        ("icmp" | "icmpv6", _) => proto.to_owned(),
        (_, Some(port)) => format!("{port}/{proto}"),
        (_, None) => return ("400 Bad Request", "text/plain", "port is required\n".into()),
    };
    match observer.explain(src, dst, &port) {
        Ok(e) => (
            "200 OK",
            "application/json",
            serde_json::to_string(&e).unwrap_or_default(),
        ),
        Err(e @ ExplainError::Query(_)) => ("400 Bad Request", "text/plain", format!("{e}\n")),
        Err(e) => (
            "503 Service Unavailable",
            "text/plain",
            format!("{:#}\n", anyhow::Error::new(e)),
        ),
    }
}

fn filter_and_last(params: &[(String, String)]) -> Result<(FlowFilter, Option<usize>), String> {
    let filter = FlowFilter::from_query(params)?;
    let last = param(params, "last")
        .map(|v| v.parse().map_err(|_| format!("last {v}: a count")))
        .transpose()?;
    Ok((filter, last))
}

fn push_line(out: &mut String, r: &Arc<FlowRecord>) {
    if let Ok(json) = serde_json::to_string(&**r) {
        out.push_str(&json);
        out.push('\n');
    }
}

async fn reply(stream: &mut TcpStream, code: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all((head + body).as_bytes()).await;
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `a=1&b=x%2Fy` → `[("a", "1"), ("b", "x/y")]`, `+` as a space.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(text.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `pod=x%2Fa&port=80`: the inverse of [`parse_query`], for clients.
pub fn encode_query(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_encode_back() {
        let params = parse_query("pod=x%2Fa&verdict=dropped&src=fd00%3A%3A1&q=a+b&flag");
        let get = |k| param(&params, k);
        assert_eq!(get("pod"), Some("x/a"));
        assert_eq!(get("src"), Some("fd00::1"));
        assert_eq!(get("q"), Some("a b"));
        assert_eq!(get("flag"), Some(""));
        let encoded = encode_query(&[("pod", "x/a".into()), ("q", "a b&c".into())]);
        assert_eq!(encoded, "pod=x/a&q=a%20b%26c");
        assert_eq!(
            parse_query(&encoded),
            [("pod".into(), "x/a".into()), ("q".into(), "a b&c".into())]
        );
    }

    #[test]
    fn a_stray_percent_is_kept() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}

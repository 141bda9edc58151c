//! A deliberately tiny HTTP/1.1 server: `GET /metrics` (text format 0.0.4), `GET /healthz`, and
//! nothing else. One request per connection (`Connection: close`), which Prometheus and curl
//! handle fine; request heads over 8 KiB or slower than 10 s are refused.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{CONTENT_TYPE, Metrics};

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A response before it is written.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }
}

/// What the request line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Parses the request head (request line and headers up to the blank line). `head_only` is
/// true for HEAD.
fn route(head: &[u8]) -> (Route, bool) {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return (Route::BadRequest, false);
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return (Route::BadRequest, false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Route::MethodNotAllowed, false);
    }
    let path = target.split('?').next().unwrap_or(target);
    let r = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/" => Route::Index,
        _ => Route::NotFound,
    };
    (r, head_only)
}

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, metrics).await {
                        tracing::debug!("http: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of fds and the like: say so and go on.
                tracing::warn!("http: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the head: up to the blank line, at most MAX_HEAD bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(head))
}

async fn handle(mut stream: TcpStream, metrics: Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) | Err(_) => {
            let r = Response::text("400 Bad Request", "bad request\n");
            return write(&mut stream, &r, false).await;
        }
        Ok(Err(e)) => return Err(e),
    };
    let (route, head_only) = route(&head);
    let response = match route {
        Route::Metrics => {
            let m = metrics.clone();
            match tokio::task::spawn_blocking(move || m.render()).await {
                Ok(Ok(body)) => Response {
                    status: "200 OK",
                    content_type: CONTENT_TYPE,
                    body,
                    allow: false,
                },
                Ok(Err(e)) => Response::text("500 Internal Server Error", format!("{e}\n")),
                Err(e) => {
                    metrics.agent.scrape_errors.inc();
                    Response::text(
                        "500 Internal Server Error",
                        format!("collecting metrics failed: {e}\n"),
                    )
                }
            }
        }
        Route::Healthz => Response::text("200 OK", "ok\n"),
        Route::Index => Response::text(
            "200 OK",
            "netfn agent: GET /metrics (Prometheus text format), GET /healthz\n",
        ),
        Route::NotFound => Response::text("404 Not Found", "not found; try /metrics\n"),
        Route::MethodNotAllowed => Response {
            allow: true,
            ..Response::text("405 Method Not Allowed", "only GET and HEAD\n")
        },
        Route::BadRequest => Response::text("400 Bad Request", "bad request\n"),
    };
    write(&mut stream, &response, head_only).await
}

async fn write(stream: &mut TcpStream, r: &Response, head_only: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    if r.allow {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(r.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(r("HEAD /healthz HTTP/1.1\r\n\r\n"), (Route::Healthz, true));
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), (Route::Index, false));
        assert_eq!(r("GET /nope HTTP/1.1\r\n\r\n"), (Route::NotFound, false));
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n"),
            (Route::MethodNotAllowed, false)
        );
        assert_eq!(r("GET /metrics\r\n\r\n"), (Route::BadRequest, false));
        assert_eq!(r("garbage"), (Route::BadRequest, false));
    }
}

//! The HTTP server: hyper 1, HTTP/1 only, on a small tokio runtime.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use crate::gpu::GpuSource;
use crate::listen::Listen;
use crate::text::{quality, Format};
use crate::{json, Error, Exporter, Options, Result};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for responses in progress.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime the server runs on: two worker threads at most, as a scrape is short CPU work
/// and the exporter must not compete with inferd for cores; for the same reason its threads
/// run under `SCHED_IDLE` (see `priority.rs`).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("exporter-http")
        .on_thread_start(crate::priority::yield_to_inferd)
        .enable_all()
        .build()
        .map_err(|source| Error::Start {
            what: "the tokio runtime",
            source,
        })
}

/// Binds the listen socket (before the runtime exists, so bind errors surface at once).
pub fn bind(listen: &Listen) -> Result<std::net::TcpListener> {
    let addr = listen.resolve().map_err(|source| Error::Resolve {
        listen: listen.to_string(),
        source,
    })?;
    let bound = match listen_on(addr) {
        // `:PORT` on a host without IPv6: every IPv4 interface, then.
        Err(e) if listen.is_any() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            listen_on(SocketAddr::from(([0, 0, 0, 0], listen.port())))
        }
        bound => bound,
    };
    bound.map_err(|source| Error::Bind {
        addr: if listen.to_string() == addr.to_string() {
            addr.to_string()
        } else {
            format!("{listen} ({addr})")
        },
        source,
    })
}

fn listen_on(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std's bind does: a restart binds while the old process's connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]` takes IPv4 too, whatever the host's `net.ipv6.bindv6only`.
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    // std's backlog.
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves `listener` until `shutdown` completes, then lets responses in progress finish.
pub async fn serve(
    listener: std::net::TcpListener,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|source| Error::Start {
        what: "the listener",
        source,
    })?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let exporter = Arc::clone(&exporter);
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let exporter = Arc::clone(&exporter);
                            async move { Ok::<_, Infallible>(handle(&exporter, &req)) }
                        }),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        log::debug!("connection ended with an error: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

/// Answers one request.
pub fn handle(exporter: &Exporter, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let gzip = accepts_gzip(header(header::ACCEPT_ENCODING));
    let ok = |(content_type, body)| (StatusCode::OK, content_type, body);
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            let format = Format::from_accept(header(header::ACCEPT));
            ok((format.content_type(), exporter.metrics(format).into_bytes()))
        }
        "/health" => {
            // 503 tells a load balancer or a probe what the body says: an inferd is not up.
            let (healthy, body) = json::health(&exporter.scrape());
            let (content_type, body) = json_body(body);
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, content_type, body)
        }
        "/gpu/stats" => ok(json_body(json::gpu_stats(&exporter.scrape()))),
        "/queue/stats" => ok(json_body(json::queue_stats(&exporter.scrape()))),
        "/models/stats" => ok(json_body(json::models_stats(&exporter.scrape()))),
        "/" => ok(("text/plain; charset=utf-8", INDEX.as_bytes().to_vec())),
        _ => return text(StatusCode::NOT_FOUND, "not found; see /\n"),
    };
    let mut r = respond(content_type, body, gzip);
    *r.status_mut() = status;
    r
}

const INDEX: &str = "inferd exporter\n\n/metrics       Prometheus text 0.0.4, or OpenMetrics 1.0 by Accept\n/health        exporter, inferd and NVML status (JSON)\n/gpu/stats     latest GPU sample (JSON)\n/queue/stats   queues, in-flight requests, connections (JSON)\n/models/stats  per-model requests and latency (JSON)\n";

fn json_body(v: serde_json::Value) -> (&'static str, Vec<u8>) {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    ("application/json", body)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn respond(content_type: &'static str, body: Vec<u8>, gzip: bool) -> Response<Full<Bytes>> {
    let (body, gzipped) = match gzip.then(|| gzip_bytes(&body)).flatten() {
        Some(z) => (z, true),
        None => (body, false),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// Compresses at the fastest level: a scrape's latency matters more than a few kilobytes.
fn gzip_bytes(body: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

/// Whether an `Accept-Encoding` header allows gzip (`gzip`, `x-gzip` or `*`, with q > 0).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding
        .into_iter()
        .flat_map(|a| a.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            ["gzip", "x-gzip", "*"]
                .iter()
                .any(|g| name.eq_ignore_ascii_case(g))
                && quality(parts) > 0.0
        })
}

/// A server running on its own thread and runtime, for tests and embedding.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Server {
    /// Binds `options.listen`, builds the exporter over `gpu`, and serves until stopped.
    pub fn start(options: &Options, gpu: Box<dyn GpuSource>) -> Result<Server> {
        let listener = bind(&options.listen)?;
        let addr = listener.local_addr().map_err(|source| Error::Start {
            what: "the listener",
            source,
        })?;
        let exporter = Arc::new(Exporter::new(options, gpu)?);
        let rt = runtime()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("exporter-server".into())
            .spawn(move || {
                rt.block_on(serve(listener, exporter, async {
                    let _ = stopped.await;
                }))
            })
            .map_err(|source| Error::Start {
                what: "the server thread",
                source,
            })?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Start {
                what: "the server thread (it panicked)",
                source: std::io::Error::other("panic"),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_threads_yield_to_inferd() {
        let rt = runtime().unwrap();
        let policy =
            rt.block_on(async { tokio::spawn(async { crate::priority::current_policy() }).await });
        assert_eq!(policy.unwrap(), libc::SCHED_IDLE);
    }

    #[test]
    fn gzip_negotiation() {
        assert!(!accepts_gzip(None));
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0, identity")));
        assert!(!accepts_gzip(Some("identity")));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = b"inferd_up{daemon=\"a\"} 1\n".repeat(100);
        let z = gzip_bytes(&body).unwrap();
        assert!(z.len() < body.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(z.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}

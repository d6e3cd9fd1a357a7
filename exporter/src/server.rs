//! The HTTP server: hyper 1, HTTP/1 only, on a small tokio runtime.
//!
//! Connections are bounded by [`HttpLimits::max_connections`]. A new connection past the limit
//! takes the place of the open one that has waited longest for a request, so that clients that
//! connect and send nothing (or trickle a header) cannot lock a scrape out; when every open
//! connection is answering a request, the new one is closed at once. An idle connection is kept
//! for [`IDLE_TIMEOUT`], longer than any common scrape interval, so each scrape reuses it.
//!
//! With a `--web.config.file` ([`WebConfigFile`]), a connection first completes its TLS
//! handshake, within [`HEADER_READ_TIMEOUT`] as a request's headers must, and each request
//! passes basic auth before it is answered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::gpu::GpuSource;
use crate::listen::Listen;
use crate::scrape::HttpConnections;
use crate::text::{quality, Format};
use crate::web_config::WebConfigFile;
use crate::{json, tls, Error, Exporter, Options, Result};

/// How long an open connection may wait for its next request (or its first): longer than
/// common scrape intervals (15 s to 1 min, Prometheus's default) so that every scrape reuses
/// its connection, and as long as Prometheus itself keeps an idle one.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a request's headers may take from their first byte: a client that trickles a
/// header (slowloris) is cut off after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection asked to close (at shutdown, or to make room) may take to finish
/// the response in progress.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections asked to close that may still be open, past the limit, before the accept loop
/// waits for one to go: enough that a burst of connects is accepted without waiting for each
/// (which, at `SCHED_IDLE` on busy cores, can take a millisecond), few enough to cost nothing.
const MAX_CLOSING: usize = 8;
/// How long the accept loop waits for a connection it asked to close to go. An idle one goes
/// as soon as its task runs; one that has just begun a request goes after its response.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// The listen backlog: room for a burst of a few thousand connects while the accept loop (at
/// `SCHED_IDLE`) waits for a core; the kernel caps it at `net.core.somaxconn` (4096 since
/// Linux 5.4). std's 128 drops the SYNs of a burst, which clients resend only after a second.
const LISTEN_BACKLOG: i32 = 4096;

/// Limits and timeouts of the HTTP side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// How long a connection may wait for a request before it is closed ([`IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// How long a request's headers may take from their first byte ([`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
}

impl HttpLimits {
    /// The limits `options` ask for, with the default timeouts.
    pub fn new(options: &Options) -> HttpLimits {
        HttpLimits {
            max_connections: usize::try_from(options.max_connections).unwrap_or(usize::MAX),
            idle_timeout: IDLE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

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
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves `listener` until `shutdown` completes, then lets responses in progress finish; over
/// TLS and behind basic auth where `web` says so.
pub async fn serve(
    listener: std::net::TcpListener,
    exporter: Arc<Exporter>,
    limits: HttpLimits,
    web: Option<Arc<WebConfigFile>>,
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
    let registry = Arc::new(Registry::new(
        limits.max_connections,
        Arc::clone(exporter.http_stats()),
    ));
    let mut connections = JoinSet::new();
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
                match registry.make_room() {
                    Room::Free => {}
                    Room::Made(evicted) => {
                        if registry.closing() > MAX_CLOSING {
                            // Under a flood of connects, the rest wait in the kernel's backlog
                            // while this one goes, so the exporter holds no more than its
                            // limit and a few it has asked to close.
                            let gone = evicted.gone.notified();
                            let _ = tokio::time::timeout(EVICTION_WAIT, gone).await;
                        }
                    }
                    // Every connection busy: dropping the stream closes it.
                    Room::None => continue,
                }
                let registered = registry.register();
                let exporter = Arc::clone(&exporter);
                let web = web.clone();
                connections.spawn(serve_connection(stream, registered, exporter, limits, web));
                // Lets the connections asked to close run before the next accept.
                tokio::task::yield_now().await;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    registry.close_all();
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        // Dropping the set aborts them.
        log::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

/// Serves one connection until it ends, times out, or the accept loop asks it to close.
async fn serve_connection(
    stream: TcpStream,
    registered: Registered,
    exporter: Arc<Exporter>,
    limits: HttpLimits,
    web: Option<Arc<WebConfigFile>>,
) {
    // The certificate in force when the connection came: a renewed one serves the next.
    let Some(tls) = web.as_ref().and_then(|w| w.current().tls().cloned()) else {
        return serve_http(stream, &registered, exporter, limits, web).await;
    };
    // Timed as a request's headers are, so that a client that connects and sends nothing (or
    // trickles its hello) is cut off; meanwhile it waits for a request, as far as the accept
    // loop is concerned, and may be asked to make room.
    let handshake = tokio::time::timeout(limits.header_read_timeout, tls::accept(stream, tls));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(refused)) => {
                log::debug!("connection refused: {refused}");
                return;
            }
            Err(_) => {
                log::debug!("connection refused: no TLS handshake within {:?}", limits.header_read_timeout);
                return;
            }
        },
        () = registered.conn.close.notified() => return,
    };
    serve_http(stream, &registered, exporter, limits, web).await;
}

/// Serves HTTP/1 on `stream` (plain TCP, or TLS once its handshake is done).
async fn serve_http<S>(
    stream: S,
    registered: &Registered,
    exporter: Arc<Exporter>,
    limits: HttpLimits,
    web: Option<Arc<WebConfigFile>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::clone(&registered.conn);
    let io = HeaderDeadline {
        stream,
        conn: Arc::clone(&conn),
        timeout: limits.header_read_timeout,
        stats: Arc::clone(&registered.registry.stats),
        armed: None,
    };
    let requests = Arc::clone(&conn);
    let service = service_fn(move |req: Request<Incoming>| {
        let busy = Answering::start(&requests);
        let exporter = Arc::clone(&exporter);
        let web = web.as_ref().map(|w| w.current());
        async move {
            let response = match web {
                None => handle(&exporter, &req),
                Some(web) => {
                    let authorization = req.headers().get(header::AUTHORIZATION);
                    let mut r = if web.auth().allows(authorization).await {
                        handle(&exporter, &req)
                    } else {
                        unauthorized()
                    };
                    r.headers_mut().extend(web.headers().clone());
                    r
                }
            };
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's header timer runs from the moment it waits for a request, first byte or not,
        // so it is the idle timeout; `HeaderDeadline` times headers from their first byte.
        .header_read_timeout(limits.idle_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(http);
    let ended = tokio::select! {
        ended = http.as_mut() => ended,
        () = conn.close.notified() => {
            if conn.requests_total.load(Relaxed) == 0 {
                // Nothing was ever answered, so nothing is lost by dropping it; and hyper's
                // graceful shutdown closes at once only a connection that sent no byte or sits
                // idle after a response, not one halfway through its first header.
                return;
            }
            // Closes now if it waits for a request, else once the response is written; a
            // client that does not read its response is not waited for past the drain time.
            http.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_TIMEOUT, http).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        log::debug!("connection ended with an error: {e}");
    }
}

/// The open connections not yet asked to close, and the counts of the exporter's own metrics.
struct Registry {
    max: usize,
    stats: Arc<HttpStats>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
}

/// What one connection is doing, shared by its task, its reader, its service and the accept
/// loop.
struct Conn {
    id: u64,
    /// When it began waiting for its next request (accepted, or its last response ready);
    /// `None` while it answers one.
    waiting_since: Mutex<Option<Instant>>,
    /// Requests whose headers it has read.
    requests_total: AtomicU64,
    /// Asks it to close: to make room for a new connection, or at shutdown.
    close: Notify,
    /// Tells the accept loop that it has closed.
    gone: Notify,
}

/// What making room for a new connection did.
enum Room {
    /// There was room.
    Free,
    /// This connection was asked to close.
    Made(Arc<Conn>),
    /// None could be asked: every one is answering a request.
    None,
}

impl Registry {
    fn new(max: usize, stats: Arc<HttpStats>) -> Registry {
        Registry {
            max,
            stats,
            open: Mutex::new(Open::default()),
        }
    }

    /// Makes room for a new connection at the limit: asks the one that has waited longest for
    /// a request to close.
    fn make_room(&self) -> Room {
        let mut open = lock(&self.open);
        if open.conns.len() < self.max {
            return Room::Free;
        }
        let longest_waiting = open
            .conns
            .values()
            .filter_map(|c| lock(&c.waiting_since).map(|since| (since, c.id)))
            .min()
            .map(|(_, id)| id);
        match longest_waiting.and_then(|id| open.conns.remove(&id)) {
            Some(evicted) => {
                evicted.close.notify_one();
                self.stats.evicted_total.fetch_add(1, Relaxed);
                Room::Made(evicted)
            }
            None => {
                self.stats.refused_total.fetch_add(1, Relaxed);
                Room::None
            }
        }
    }

    /// Connections asked to close and not yet closed.
    fn closing(&self) -> usize {
        let registered = lock(&self.open).conns.len() as u64;
        let open = self.stats.open.load(Relaxed);
        usize::try_from(open.saturating_sub(registered)).unwrap_or(usize::MAX)
    }

    /// Registers a new connection.
    fn register(self: &Arc<Self>) -> Registered {
        let mut open = lock(&self.open);
        let id = open.next_id;
        open.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            waiting_since: Mutex::new(Some(Instant::now())),
            requests_total: AtomicU64::new(0),
            close: Notify::new(),
            gone: Notify::new(),
        });
        open.conns.insert(id, Arc::clone(&conn));
        self.stats.open.fetch_add(1, Relaxed);
        Registered {
            registry: Arc::clone(self),
            conn,
        }
    }

    /// Asks every connection to close: idle ones at once, busy ones after their response.
    fn close_all(&self) {
        for (_, conn) in lock(&self.open).conns.drain() {
            conn.close.notify_one();
        }
    }
}

/// A connection's place in the registry, given up when its task ends, or is dropped unpolled.
struct Registered {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry.open).conns.remove(&self.conn.id);
        self.registry.stats.open.fetch_sub(1, Relaxed);
        self.conn.gone.notify_one();
    }
}

/// Marks a connection busy from a request's headers until its response is ready.
struct Answering(Arc<Conn>);

impl Answering {
    fn start(conn: &Arc<Conn>) -> Answering {
        conn.requests_total.fetch_add(1, Relaxed);
        *lock(&conn.waiting_since) = None;
        Answering(Arc::clone(conn))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        *lock(&self.0.waiting_since) = Some(Instant::now());
    }
}

/// Nothing here panics while holding a lock; were something to, the map or instant it guards
/// would still be whole, so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The HTTP side's counts, which the exporter's own collector reads.
#[derive(Debug, Default)]
pub(crate) struct HttpStats {
    open: AtomicU64,
    evicted_total: AtomicU64,
    refused_total: AtomicU64,
    header_timeouts_total: AtomicU64,
}

impl HttpStats {
    /// The counts now.
    pub(crate) fn read(&self) -> HttpConnections {
        HttpConnections {
            open: self.open.load(Relaxed),
            evicted_total: self.evicted_total.load(Relaxed),
            refused_total: self.refused_total.load(Relaxed),
            header_timeouts_total: self.header_timeouts_total.load(Relaxed),
        }
    }
}

/// A connection's stream, which fails a read once a request's headers have taken longer than
/// `timeout` since their first byte. hyper's own header timer cannot do this: it starts when
/// hyper waits for a request, so it cannot tell a slow header from an idle keep-alive wait.
struct HeaderDeadline<S> {
    stream: S,
    conn: Arc<Conn>,
    timeout: Duration,
    stats: Arc<HttpStats>,
    /// Set at a request's first byte: the deadline, and the requests read by then (once that
    /// count moves, the headers are in).
    armed: Option<(Pin<Box<Sleep>>, u64)>,
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let requests = this.conn.requests_total.load(Relaxed);
        if this.armed.as_ref().is_some_and(|(_, at)| *at != requests) {
            this.armed = None;
        }
        let filled = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Poll::Pending, Some((deadline, _))) = (&polled, &mut this.armed) {
            if deadline.as_mut().poll(cx).is_ready() {
                this.stats.header_timeouts_total.fetch_add(1, Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request's headers took too long",
                )));
            }
        } else if this.armed.is_none()
            && buf.filled().len() > filled
            && lock(&this.conn.waiting_since).is_some()
        {
            // The first byte of a request: its headers' time starts now.
            let deadline = Box::pin(tokio::time::sleep(this.timeout));
            this.armed = Some((deadline, requests));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
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
            let mut r = respond(format.content_type(), exporter.metrics(format), gzip);
            // The body depends on Accept as well: a cache must not hand one format to a client
            // that asked for another.
            r.headers_mut().insert(
                header::VARY,
                HeaderValue::from_static("Accept, Accept-Encoding"),
            );
            return r;
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

/// 401 with the challenge that makes a browser ask, as exporter-toolkit answers.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    r
}

const INDEX: &str = "inferd exporter\n\n/metrics       Prometheus text 0.0.4, OpenMetrics 1.0 or protobuf (native histograms), by Accept\n/health        exporter, inferd and NVML status (JSON)\n/gpu/stats     latest GPU sample (JSON)\n/queue/stats   queues, in-flight requests, connections (JSON)\n/models/stats  per-model requests and latency (JSON)\n";

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
///
/// Each HTTP thread keeps one deflate state and resets it per response: setting a new one up
/// was 8 % of a scrape's instructions (`GzEncoder` takes no state to reuse, so the gzip
/// header and trailer, RFC 1952's 18 bytes, are written here around the raw deflate stream).
fn gzip_bytes(body: &[u8]) -> Option<Vec<u8>> {
    use flate2::{Compress, Compression, Crc, FlushCompress, Status};
    thread_local! {
        static DEFLATE: std::cell::RefCell<Compress> =
            std::cell::RefCell::new(Compress::new(Compression::fast(), false));
    }
    // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    DEFLATE.with(|deflate| {
        let mut deflate = deflate.try_borrow_mut().ok()?;
        deflate.reset();
        let mut out = Vec::with_capacity(body.len() / 8 + 64);
        out.extend_from_slice(&HEADER);
        loop {
            let consumed = usize::try_from(deflate.total_in()).ok()?;
            if out.capacity() - out.len() < 4096 {
                out.reserve(out.capacity().max(4096));
            }
            let input = body.get(consumed..)?;
            match deflate
                .compress_vec(input, &mut out, FlushCompress::Finish)
                .ok()?
            {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => {}
            }
        }
        let mut crc = Crc::new();
        crc.update(body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32.
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        Some(out)
    })
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
    /// Binds `options.listen`, builds the exporter over `gpu`, and serves until stopped (with
    /// `options.web_config_file`'s TLS and basic auth, if it names one).
    pub fn start(options: &Options, gpu: Box<dyn GpuSource>) -> Result<Server> {
        Server::start_with(options, gpu, HttpLimits::new(options))
    }

    /// As [`Server::start`], with other HTTP limits (tests use short timeouts).
    pub fn start_with(
        options: &Options,
        gpu: Box<dyn GpuSource>,
        limits: HttpLimits,
    ) -> Result<Server> {
        let web = options
            .web_config_file
            .as_ref()
            .map(|path| WebConfigFile::load(path).map(Arc::new))
            .transpose()?;
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
                rt.block_on(serve(listener, exporter, limits, web, async {
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
    fn at_the_limit_with_every_connection_busy_a_new_one_is_refused() {
        let stats = Arc::new(HttpStats::default());
        let registry = Arc::new(Registry::new(2, Arc::clone(&stats)));
        assert!(matches!(registry.make_room(), Room::Free));
        let a = registry.register();
        assert!(matches!(registry.make_room(), Room::Free));
        let b = registry.register();
        let busy = (Answering::start(&a.conn), Answering::start(&b.conn));
        assert!(matches!(registry.make_room(), Room::None));
        assert_eq!(stats.read().refused_total, 1);
        assert_eq!(stats.read().evicted_total, 0);
        // Once one has answered, it is the one to make room.
        drop(busy.1);
        let Room::Made(evicted) = registry.make_room() else {
            panic!("no room made");
        };
        assert_eq!(evicted.id, b.conn.id);
        assert_eq!(stats.read().evicted_total, 1);
        let open: Vec<u64> = lock(&registry.open).conns.keys().copied().collect();
        assert_eq!(open, vec![a.conn.id]);
        assert_eq!(stats.read().open, 2, "b is asked to close, not closed yet");
        drop(b);
        assert_eq!(stats.read().open, 1);
        drop(busy.0);
    }

    #[test]
    fn a_client_that_never_says_hello_is_cut_off_and_holds_up_no_scrape() {
        use crate::test_certs::{tls_get, write_pair};
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "server");
        let hash = bcrypt::hash("pw", 4).unwrap();
        let web = dir.path().join("web.yml");
        std::fs::write(
            &web,
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
                 basic_auth_users:\n  alice: '{hash}'\nhttp_server_config:\n  headers:\n    \
                 X-Content-Type-Options: nosniff\n"
            ),
        )
        .unwrap();
        let segments = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut options = Options::local(segments.path(), &["inferd*"]);
        options.web_config_file = Some(web);
        let limits = HttpLimits {
            max_connections: 8,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_millis(500),
        };
        let gpu = Box::new(crate::FakeGpuSource::missing());
        let server = Server::start_with(&options, gpu, limits).unwrap();

        let mut silent = std::net::TcpStream::connect(server.addr()).unwrap();
        let opened = Instant::now();
        let (status, page) =
            tls_get(server.addr(), &pair.cert, "/metrics", Some(("alice", "pw"))).unwrap();
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("# TYPE inferd_exporter_build_info"), "{page}");
        assert!(page.contains("x-content-type-options: nosniff"), "{page}");
        let (status, page) = tls_get(server.addr(), &pair.cert, "/metrics", None).unwrap();
        assert_eq!(status, 401, "{page}");
        assert!(page.contains("www-authenticate: Basic"), "{page}");
        assert!(!page.contains("inferd_"), "{page}");

        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = silent.read(&mut byte);
        assert!(matches!(read, Ok(0)), "closed without a byte: {read:?}");
        let waited = opened.elapsed();
        assert!(
            waited >= limits.header_read_timeout && waited < Duration::from_secs(5),
            "closed after {waited:?}"
        );
        server.stop().unwrap();
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
        // Twice on one thread (the second reuses the reset state), then a large page, an empty
        // one, and bytes that do not compress.
        let mut noise = Vec::new();
        let mut x = 1u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        let bodies = [
            b"inferd_up{daemon=\"a\"} 1\n".repeat(100),
            b"inferd_up{daemon=\"b\"} 0\n".repeat(100),
            b"inferd_requests_total{status=\"ok\"} 12345\n".repeat(40_000),
            Vec::new(),
            noise,
        ];
        for body in bodies {
            let z = gzip_bytes(&body).unwrap();
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(z.as_slice())
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, body);
        }
    }
}

//! The openpi listener (`--openpi-listen`): openpi's websocket protocol, as
//! `openpi_client.websocket_client_policy.WebsocketClientPolicy` speaks it, and `GET /healthz`,
//! on one TCP port.
//!
//! hyper serves each connection's HTTP/1 until its one request is answered: `/healthz`, or a
//! websocket handshake, which checks the API key and answers 101. The upgraded connection is
//! then tungstenite's, with the model's frame limit as its message limit. From there it is the
//! Unix socket's path: each binary message is an observation dict, staged against the model's
//! signature and handed to the same [`Context::submit`] as a Unix-socket request, on an
//! [`Account`] whose [`Wire::Openpi`] encodes its answers as openpi's messages.
//!
//! Every accepted TCP connection holds a `--max-connections` slot, as a Unix-socket connection
//! does; a handshake without one is answered 503 (`/healthz` is answered all the same).

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FusedStream, SplitStream, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use shm_layout::{Counter, RobotTypeId};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::config::{ApiKey, OPENPI_ROBOT_TYPE};
use crate::ledger::{self, Account, Received, Wire};
use crate::model::LoadedModel;
use crate::outbox::{outbox, Outgoing};
use crate::protocol::openpi::{self, SERVER_TIMING};
use crate::protocol::{ErrorCode, HEADER_BYTES};
use crate::server::{read_or_idle, refuse, Context, Read, EXTRA_BACKLOG_FRAMES};
use crate::{Error, Result};

/// How long a connection may take to send its HTTP request (the handshake or `/healthz`):
/// a connection that holds a slot without asking for anything is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing websocket waits for the peer's close frame (or, after a message it
/// could not read, for the rest of that message) before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Binds the listener before inferd is ready, so that a port in use is a start-up error.
/// `model`'s outputs must leave `server_timing` to openpi's answer.
pub fn bind(addr: SocketAddr, model: &LoadedModel) -> Result<std::net::TcpListener> {
    let meta = model.metadata();
    if meta
        .signature
        .outputs()
        .iter()
        .any(|o| o.name == SERVER_TIMING)
    {
        return Err(Error::Config(format!(
            "--openpi-listen: model {:?} has an output named {SERVER_TIMING:?}, the key of \
             openpi's timing in every answer; rename that output to serve it to openpi clients",
            meta.name
        )));
    }
    let flag = format!("--openpi-listen {addr}");
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        ErrorKind::AddrInUse => Error::Config(format!(
            "{flag}: the address is in use (another inferd or openpi server?); stop it or \
             choose another port"
        )),
        ErrorKind::AddrNotAvailable => Error::Config(format!(
            "{flag}: no interface of this host has that address"
        )),
        ErrorKind::PermissionDenied => Error::Config(format!(
            "{flag}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
        )),
        _ => Error::Io {
            path: flag.clone().into(),
            source: e,
        },
    })?;
    listener.set_nonblocking(true).map_err(Error::io(&flag))?;
    Ok(listener)
}

/// A websocket handshake answered 101, waiting for hyper to hand over its connection.
struct Upgrade {
    on: OnUpgrade,
    robot_type: String,
}

/// Serves one TCP connection: its HTTP request, then, if that was a websocket handshake, the
/// websocket until the peer leaves, breaks the protocol, idles out, or the server closes.
/// `slot` is its place under `--max-connections`, `None` past the limit.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    mut closing: watch::Receiver<bool>,
    number: u64,
    slot: Option<ledger::Connection>,
) {
    // Answers are small and each one is awaited by a robot: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let upgrade: Arc<Mutex<Option<Upgrade>>> = Arc::default();
    let service = {
        let (ctx, upgrade, has_slot) = (Arc::clone(&ctx), Arc::clone(&upgrade), slot.is_some());
        service_fn(move |req| {
            let response = respond(&ctx, req, has_slot, &upgrade, number, peer);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let http = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let served = tokio::select! {
        biased;
        _ = closing.wait_for(|closed| *closed) => return,
        served = tokio::time::timeout(HANDSHAKE_TIMEOUT, http) => served,
    };
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("openpi connection {number} from {peer}: HTTP: {e}"),
        Err(_) => {
            log::debug!(
                "openpi connection {number} from {peer}: no request in {HANDSHAKE_TIMEOUT:?}"
            );
            return;
        }
    }
    let pending = upgrade
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let (Some(pending), Some(slot)) = (pending, slot) else {
        return;
    };
    let upgraded = match pending.on.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            log::debug!("openpi connection {number} from {peer}: upgrade failed: {e}");
            return;
        }
    };
    let limit = ctx.models.current().max_frame_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    log::debug!(
        "openpi connection {number} from {peer} opened, robot type {:?}",
        pending.robot_type
    );
    websocket(ws, ctx, closing, number, &pending.robot_type).await;
    drop(slot);
    log::debug!("openpi connection {number} closed");
}

/// The one HTTP answer of a connection: `/healthz`, a websocket handshake (101, with the
/// upgrade left in `upgrade`), or why not.
fn respond(
    ctx: &Context,
    mut req: Request<Incoming>,
    has_slot: bool,
    upgrade: &Mutex<Option<Upgrade>>,
    number: u64,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let handshake = wants_websocket(req.headers());
    if req.uri().path() == "/healthz" && !handshake {
        return match (req.method(), ctx.is_draining()) {
            (&Method::GET | &Method::HEAD, false) => text(StatusCode::OK, "OK\n".into()),
            (&Method::GET | &Method::HEAD, true) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            }
            _ => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                r
            }
        };
    }
    if !handshake {
        return text(
            StatusCode::NOT_FOUND,
            "inferd serves openpi's websocket protocol here (ws://HOST:PORT) and GET /healthz\n"
                .into(),
        );
    }
    let headers = req.headers();
    if req.method() != Method::GET {
        return text(
            StatusCode::BAD_REQUEST,
            "a websocket handshake is a GET\n".into(),
        );
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 only\n".into(),
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the handshake has no Sec-WebSocket-Key\n".into(),
        );
    };
    let Some(robot_type) = robot_type(&ctx.config.openpi_api_key, headers) else {
        log::warn!("openpi connection {number} from {peer}: refused, no valid API key");
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "this server needs an API key: Authorization: Api-Key KEY \
             (WebsocketClientPolicy(api_key=KEY))\n"
                .into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Api-Key"),
        );
        return r;
    };
    if ctx.is_draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "inferd is draining and takes no new connections\n".into(),
        );
    }
    if !has_slot {
        let limit = ctx.config.max_connections;
        let message = format!("too many connections (--max-connections {limit}); try again later");
        log::warn!("refused openpi connection {number} from {peer}: {message}");
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n"));
    }
    let accept = derive_accept_key(key.as_bytes());
    *upgrade.lock().unwrap_or_else(PoisonError::into_inner) = Some(Upgrade {
        on: hyper::upgrade::on(&mut req),
        robot_type: robot_type.to_owned(),
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // The accept key is base64: always a valid header value.
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r
}

/// Whether a request asks for a websocket: `Connection: upgrade` (among its tokens) and
/// `Upgrade: websocket`, compared as HTTP compares them, without case.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The robot type of a handshake: with no key configured, `openpi`; otherwise the robot type
/// of the key its `Authorization: Api-Key KEY` carries, or `None` without a configured one.
fn robot_type<'k>(keys: &'k [ApiKey], headers: &HeaderMap) -> Option<&'k str> {
    if keys.is_empty() {
        return Some(OPENPI_ROBOT_TYPE);
    }
    let presented = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = presented.iter().position(|&b| b == b' ')?;
    let (scheme, token) = presented.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"Api-Key") {
        return None;
    }
    let token = token.trim_ascii();
    // Every key is compared, each without an early exit, so that the time taken says nothing
    // of how much of a key a guess got right.
    keys.iter()
        .fold(None, |found, k| {
            let same = constant_time_eq(k.key.as_bytes(), token);
            found.or(same.then_some(k))
        })
        .map(ApiKey::robot_type)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A plain answer, after which hyper closes the connection: one request per connection, so
/// that no idle keep-alive connection holds a `--max-connections` slot. (Not hyper's
/// `keep_alive(false)`, which would also mark a 101 `Connection: close`.)
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Serves an upgraded websocket: the metadata message, then each binary message as a request,
/// its answers written by a writer task as they finish.
async fn websocket(
    ws: Ws,
    ctx: Arc<Context>,
    closing: watch::Receiver<bool>,
    number: u64,
    robot_type: &str,
) {
    let (sink, mut stream) = ws.split();
    let (outbox, outgoing) = outbox();
    let metadata = &ctx.models.current().metadata_frame;
    outbox.send(Outgoing::Binary(
        metadata[HEADER_BYTES.min(metadata.len())..].to_vec(),
    ));
    let writer = tokio::spawn(outgoing.run_websocket(sink, number));
    let mut conn = Connection {
        robot_type: ctx.metrics.writer().robot_type(robot_type),
        account: Account::new(Arc::clone(&ctx.metrics), outbox, Wire::Openpi),
        ctx,
        number,
        next_id: 0,
    };
    let close = conn.read(&mut stream, closing).await;
    // The writer ends once this connection's account and every ticket on it are gone.
    drop(conn);
    let Ok(sink) = writer.await else {
        return;
    };
    if let Ok(ws) = stream.reunite(sink) {
        finish(ws, close).await;
    }
}

/// Closes the websocket: sends `close` (or completes the peer's close), then waits a little
/// for the peer's close frame, or reads and drops what is left of a message it was refused,
/// so that the peer reads the error before the connection goes.
async fn finish(mut ws: Ws, close: Option<CloseFrame>) {
    let unreadable = ws.is_terminated();
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.close(close).await.is_err() {
            return;
        }
        if unreadable {
            // The stream stopped at a message it would not read: closing now, with that
            // message's bytes unread, would make the kernel reset the connection, and the
            // peer could lose the error sent just before.
            let mut sink = vec![0u8; 64 * 1024];
            while ws.get_mut().read(&mut sink).await.is_ok_and(|n| n > 0) {}
        } else {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

enum Next {
    Message(Message),
    Idle,
    End,
    Error(WsError),
}

async fn next_message(stream: &mut SplitStream<Ws>, idle: Option<Duration>) -> Next {
    match read_or_idle(stream, idle).await {
        Read::Item(Ok(m)) => Next::Message(m),
        Read::Item(Err(e)) => Next::Error(e),
        Read::Idle => Next::Idle,
        Read::End => Next::End,
    }
}

struct Connection {
    ctx: Arc<Context>,
    account: Arc<Account>,
    robot_type: RobotTypeId,
    number: u64,
    /// The id of the next request: openpi's messages carry none, and the ledger's tickets
    /// (and the log) name requests by one.
    next_id: u64,
}

impl Connection {
    /// Reads requests until the connection ends; returns the close frame to end it with, if
    /// the server is the one closing.
    async fn read(
        &mut self,
        stream: &mut SplitStream<Ws>,
        mut closing: watch::Receiver<bool>,
    ) -> Option<CloseFrame> {
        let going_away = || {
            Some(CloseFrame {
                code: CloseCode::Away,
                reason: "inferd is shutting down".into(),
            })
        };
        let idle = self.ctx.config.idle_timeout();
        let backlog = self.ctx.config.max_in_flight + EXTRA_BACKLOG_FRAMES;
        loop {
            // Reading pauses while the client leaves its answers unread.
            let writable = tokio::select! {
                biased;
                _ = closing.wait_for(|closed| *closed) => return going_away(),
                writable = self.account.outbox().wait_below(backlog) => writable,
            };
            if !writable {
                return None;
            }
            let next = tokio::select! {
                biased;
                _ = closing.wait_for(|closed| *closed) => return going_away(),
                next = next_message(stream, idle) => next,
            };
            match next {
                Next::Message(Message::Binary(body)) => self.handle(body),
                Next::Message(Message::Text(_)) => {
                    return self.fatal(
                        ErrorCode::ProtocolError,
                        "inferd's openpi listener reads binary msgpack messages; a text message \
                         ends the connection"
                            .into(),
                        CloseCode::Unsupported,
                    )
                }
                // Pings are answered by tungstenite; like any message they show the peer is
                // there, so the idle timer starts again.
                Next::Message(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Next::Message(Message::Close(_)) | Next::End => return None,
                Next::Idle if self.account.in_flight() > 0 => {}
                Next::Idle => {
                    log::info!(
                        "openpi connection {}: idle for {:?}, closing",
                        self.number,
                        idle.unwrap_or_default()
                    );
                    return Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "idle".into(),
                    });
                }
                Next::Error(WsError::Capacity(CapacityError::MessageTooLong {
                    size,
                    max_size,
                })) => {
                    return self.fatal(
                        ErrorCode::FrameTooLarge,
                        format!(
                            "message of {size} bytes exceeds the maximum of {max_size} \
                             (max_frame_bytes)"
                        ),
                        CloseCode::Size,
                    )
                }
                // A peer gone without a close frame: what every openpi robot does as its
                // process ends (openpi's client has no close()). The connection's end, as EOF
                // is on the Unix socket, not a protocol error.
                Next::Error(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return None
                }
                Next::Error(WsError::Protocol(e)) => {
                    return self.fatal(
                        ErrorCode::ProtocolError,
                        format!("websocket protocol error: {e}"),
                        CloseCode::Protocol,
                    )
                }
                Next::Error(WsError::Utf8(e)) => {
                    return self.fatal(
                        ErrorCode::ProtocolError,
                        format!("a text message that is not UTF-8: {e}"),
                        CloseCode::Invalid,
                    )
                }
                Next::Error(e) => {
                    log::debug!("openpi connection {}: read failed: {e}", self.number);
                    return None;
                }
            }
        }
    }

    /// Handles one binary message: an observation dict, staged and submitted as a request, or
    /// refused `invalid_input` with the connection kept open (each message is whole, so the
    /// next one can still be read).
    fn handle(&mut self, body: Bytes) {
        let arrived = Instant::now();
        let model = self.ctx.models.current();
        let id = self.next_id;
        self.next_id += 1;
        let ticket = self.account.open(Received {
            id: Some(id),
            model: model.segment_id,
            robot_type: self.robot_type,
            arrived,
            request_bytes: openpi::message_bytes(body.len(), true),
        });
        let value = match openpi::decode_message(&body) {
            Ok(value) => value,
            Err(e) => return refuse(self.number, ticket, ErrorCode::InvalidInput, e.to_string()),
        };
        let flattened = match openpi::observation(&value) {
            Ok(inputs) => inputs,
            Err(e) => return refuse(self.number, ticket, ErrorCode::InvalidInput, e.to_string()),
        };
        // Keys the model does not take are left out, as openpi's own input transforms leave
        // them: an openpi robot sends its whole observation, whatever the policy reads of it.
        // A key the model takes and the robot lacks is still `invalid_input` by name.
        let signature = &model.metadata().signature;
        let inputs: Vec<_> = flattened
            .iter()
            .map(|(n, v)| (n.as_ref(), *v))
            .filter(|(name, _)| signature.inputs().iter().any(|s| s.name == *name))
            .collect();
        let staged = signature.stage(&body, &inputs, self.ctx.config.max_batch_size);
        match staged {
            Ok(staged) => self
                .ctx
                .submit(self.number, ticket, body.clone(), staged, None),
            Err(e) => refuse(self.number, ticket, ErrorCode::InvalidInput, e.to_string()),
        }
    }

    /// Sends a connection-ending error as text, then the close frame `code` that ends it.
    fn fatal(&self, code: ErrorCode, message: String, close: CloseCode) -> Option<CloseFrame> {
        log::warn!(
            "openpi connection {}: closing, {code}: {}",
            self.number,
            message.escape_debug()
        );
        self.ctx.metrics.count(Counter::ProtocolErrorsTotal, 1);
        self.account
            .outbox()
            .send(Outgoing::Text(openpi::error_text(code, &message)));
        Some(CloseFrame {
            code: close,
            reason: code.as_str().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_key_names_its_robot_type_and_anything_else_is_refused() {
        let keys = vec![
            ApiKey {
                key: "k1".into(),
                robot_type: Some("franka".into()),
            },
            ApiKey {
                key: "k2".into(),
                robot_type: None,
            },
        ];
        let auth = |v: &'static str| headers(&[("authorization", v)]);
        assert_eq!(robot_type(&keys, &auth("Api-Key k1")), Some("franka"));
        assert_eq!(robot_type(&keys, &auth("api-key  k2")), Some("openpi"));
        for bad in [
            "Api-Key k3",
            "Api-Key k",
            "Api-Key k11",
            "Bearer k1",
            "k1",
            "Api-Key ",
        ] {
            assert_eq!(robot_type(&keys, &auth(bad)), None, "{bad}");
        }
        assert_eq!(robot_type(&keys, &HeaderMap::new()), None);
        assert_eq!(robot_type(&[], &HeaderMap::new()), Some("openpi"));
    }

    #[test]
    fn a_websocket_handshake_is_told_by_its_headers_as_http_compares_them() {
        assert!(wants_websocket(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ])));
        assert!(!wants_websocket(&headers(&[("connection", "upgrade")])));
        assert!(!wants_websocket(&headers(&[
            ("connection", "close"),
            ("upgrade", "websocket"),
        ])));
    }
}

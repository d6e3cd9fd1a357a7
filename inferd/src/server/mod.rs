//! The daemon: segment, model, workers and its listeners (the Unix socket, and openpi's
//! websocket with `--openpi-listen`), from start to a drained exit. Both listeners read
//! requests into the same [`Context::submit`].

mod connection;
mod listener;
mod openpi;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use shm_layout::State;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use self::listener::bind;
use crate::config::{Config, IO_THREADS};
use crate::ledger::{Ledger, Ticket, TooManyInFlight};
use crate::metrics::Metrics;
use crate::model::ModelStore;
use crate::protocol::{ErrorCode, ErrorReply, ServerMessage};
use crate::scheduler::{BatchPolicy, Job, Scheduler};
use crate::signals::{Event, Signals};
use crate::signature::Staged;
use crate::{Error, Result};

/// Messages a connection may have waiting to be written beyond its requests in flight before
/// its reader stops reading: a client that does not read its answers is slowed down, not
/// buffered without bound.
const EXTRA_BACKLOG_FRAMES: usize = 64;

/// How long, after the drain timeout, to wait for batches already running.
const ABANDON_GRACE: Duration = Duration::from_secs(5);
/// How long connections get to flush their last answers once the drain is over.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// What every connection shares.
pub(crate) struct Context {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub models: Arc<ModelStore>,
    pub scheduler: Scheduler,
    pub ledger: Ledger,
    draining: AtomicBool,
}

impl Context {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Queues a request that connection `connection` has read and staged, or answers why not:
    /// `shutting_down` while draining, `overloaded` past `--max-in-flight` (and, from the
    /// scheduler, past `--queue-capacity`). The one way in for both listeners, so a websocket
    /// request meets the same limits, deadline and queue as a Unix-socket one.
    pub fn submit(
        &self,
        connection: u64,
        mut ticket: Ticket,
        frame: Bytes,
        staged: Staged,
        deadline_us: Option<u64>,
    ) {
        if self.is_draining() {
            let msg = "inferd is draining and takes no new requests".to_owned();
            return refuse(connection, ticket, ErrorCode::ShuttingDown, msg);
        }
        if let Err(TooManyInFlight { limit }) = ticket.admit(self.config.max_in_flight) {
            let msg =
                format!("this connection already has {limit} requests in flight (--max-in-flight)");
            return refuse(connection, ticket, ErrorCode::Overloaded, msg);
        }
        let deadline =
            deadline_us.and_then(|us| ticket.arrived().checked_add(Duration::from_micros(us)));
        let job = Job {
            ticket,
            frame,
            staged,
            deadline,
        };
        self.scheduler.submit(job);
    }
}

/// Answers a request that connection `connection` read and refused before compute.
fn refuse(connection: u64, ticket: Ticket, code: ErrorCode, message: String) {
    // The message quotes the client's text; escaped again here so that no message, now or
    // later, can carry a client's line break into the log.
    log::debug!(
        "connection {connection}: request {:?} refused, {code}: {}",
        ticket.id(),
        message.escape_debug()
    );
    ticket.refuse(code, message);
}

/// Runs inferd until SIGTERM or SIGINT has drained it. Returns `Ok` after a clean drain.
pub fn run(config: Config) -> Result<()> {
    let signals = Signals::install()?;
    let metrics = Arc::new(Metrics::create(&config.segment_dir, &config.segment_name)?);
    log::info!(
        "metrics segment {} (generation {:#x})",
        metrics.writer().path().display(),
        metrics.writer().generation()
    );
    let stop_heartbeat = Arc::new(AtomicBool::new(false));
    let heartbeat = match metrics.start_heartbeat(Arc::clone(&stop_heartbeat)) {
        Ok(heartbeat) => heartbeat,
        Err(e) => {
            let _ = metrics.writer().remove();
            return Err(e);
        }
    };
    let outcome = serve(config, Arc::clone(&metrics), signals);
    metrics.set_state(State::Stopped);
    stop_heartbeat.store(true, Ordering::Relaxed);
    let _ = heartbeat.join();
    match &outcome {
        Ok(()) => log::info!("stopped"),
        // `serve` fails only before it is ready: a start that failed leaves no segment for the
        // exporter to report down forever. (A daemon that served keeps its stopped segment.)
        Err(_) => {
            if let Err(e) = metrics.writer().remove() {
                log::warn!("could not remove the segment of a failed start: {e}");
            }
        }
    }
    outcome
}

fn serve(config: Config, metrics: Arc<Metrics>, mut signals: Signals) -> Result<()> {
    let models = Arc::new(ModelStore::load(&config, &metrics)?);
    let policy = BatchPolicy {
        max_batch_size: config.max_batch_size,
        max_queue_delay: config.max_queue_delay(),
    };
    let scheduler = Scheduler::start(
        config.workers,
        config.queue_capacity,
        policy,
        Arc::clone(&models),
        Arc::clone(&metrics),
    )?;
    // Bound before the Unix socket, so that a port in use leaves no socket file behind.
    let openpi = match config.openpi_listen {
        Some(addr) => Some(openpi::bind(addr, &models.current())?),
        None => None,
    };
    let socket = config.socket_path();
    // Under socket activation systemd owns the socket file; otherwise we bind (and later remove) it.
    let (listener, owned_socket) = match crate::systemd::activated_listener()? {
        Some(listener) => {
            log::info!("serving the socket systemd passed (socket activation)");
            (listener, None)
        }
        None => (bind(&socket)?, Some(socket.as_path())),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(IO_THREADS)
        .thread_name("inferd-io")
        .enable_all()
        .build()
        .map_err(Error::io("tokio runtime"))?;
    let ctx = Arc::new(Context {
        config,
        ledger: Ledger::new(Arc::clone(&metrics)),
        metrics,
        models,
        scheduler,
        draining: AtomicBool::new(false),
    });
    let served = runtime.block_on(async {
        let listener = UnixListener::from_std(listener).map_err(Error::io(&socket))?;
        let openpi = match openpi {
            Some(l) => Some(TcpListener::from_std(l).map_err(Error::io("--openpi-listen"))?),
            None => None,
        };
        // The address bound, which names the port when port 0 asked for any free one.
        let openpi_addr = match &openpi {
            Some(l) => Some(l.local_addr().map_err(Error::io("--openpi-listen"))?),
            None => None,
        };
        ctx.metrics.set_state(State::Ready);
        let status = format!(
            "ready on {}{} with {} workers, batches of up to {}, queue of {}",
            socket.display(),
            openpi_addr.map_or(String::new(), |a| format!(" and openpi on ws://{a}")),
            ctx.config.workers,
            ctx.config.max_batch_size,
            ctx.config.queue_capacity
        );
        log::info!("{status}");
        crate::systemd::notify_ready(&status);
        let listeners = Listeners {
            unix: listener,
            openpi,
        };
        accept_until_drained(&ctx, listeners, &mut signals, owned_socket).await;
        Ok::<(), Error>(())
    });
    ctx.scheduler.stop();
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

/// What inferd accepts connections on.
struct Listeners {
    unix: UnixListener,
    openpi: Option<TcpListener>,
}

/// The next connection of the openpi listener; never, without one.
async fn accept_openpi(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The connections being served, each a task that ends when its connection does.
struct Served {
    ctx: Arc<Context>,
    /// Becomes true once the drain is over: every connection closes.
    closing: watch::Receiver<bool>,
    connections: JoinSet<()>,
    /// Connections accepted so far, on both listeners: each one's number in the log.
    accepted: u64,
}

impl Served {
    async fn unix(
        &mut self,
        incoming: std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)>,
    ) {
        let stream = match incoming {
            Ok((stream, _)) => stream,
            Err(e) => return accept_failed("accept", e).await,
        };
        self.accepted += 1;
        let Some(slot) = self.ctx.ledger.connect(self.ctx.config.max_connections) else {
            tokio::spawn(refuse_connection(stream, self.ctx.config.max_connections));
            return;
        };
        let (ctx, closing, number) = (Arc::clone(&self.ctx), self.closing.clone(), self.accepted);
        self.connections.spawn(async move {
            connection::serve(stream, ctx, closing, number).await;
            drop(slot);
        });
    }

    async fn openpi(&mut self, incoming: std::io::Result<(TcpStream, SocketAddr)>) {
        let (stream, peer) = match incoming {
            Ok(accepted) => accepted,
            Err(e) => return accept_failed("openpi accept", e).await,
        };
        self.accepted += 1;
        // Over the limit it is still served far enough to be told why (its handshake is
        // answered 503), bounded by the handshake timeout.
        let slot = self.ctx.ledger.connect(self.ctx.config.max_connections);
        let (ctx, closing) = (Arc::clone(&self.ctx), self.closing.clone());
        self.connections.spawn(openpi::serve(
            stream,
            peer,
            ctx,
            closing,
            self.accepted,
            slot,
        ));
    }
}

/// Logs a failed accept and backs off: usually inferd is out of file descriptors, and
/// retrying at once would spin.
async fn accept_failed(what: &str, e: std::io::Error) {
    log::warn!("{what} failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_until_drained(
    ctx: &Arc<Context>,
    listeners: Listeners,
    signals: &mut Signals,
    owned_socket: Option<&Path>,
) {
    let (closing_tx, closing) = watch::channel(false);
    let mut served = Served {
        ctx: Arc::clone(ctx),
        closing,
        connections: JoinSet::new(),
        accepted: 0,
    };
    let signal_name = loop {
        tokio::select! {
            event = signals.events.recv() => match event {
                Some(Event::Reload) => {
                    log::info!("SIGHUP: reloading the model");
                    let ctx = Arc::clone(ctx);
                    tokio::task::spawn_blocking(move || ctx.models.reload(&ctx.config, &ctx.metrics));
                }
                Some(Event::Drain(name)) => break name,
                None => break "signal thread gone",
            },
            incoming = listeners.unix.accept() => served.unix(incoming).await,
            incoming = accept_openpi(listeners.openpi.as_ref()) => served.openpi(incoming).await,
            Some(_) = served.connections.join_next(), if !served.connections.is_empty() => {}
        }
    };
    drain(
        ctx,
        listeners,
        &mut served,
        signals,
        owned_socket,
        signal_name,
    )
    .await;
    let _ = closing_tx.send(true);
    let connections = &mut served.connections;
    if tokio::time::timeout(FLUSH_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        log::warn!(
            "{} connections did not flush in {FLUSH_GRACE:?}; closing them",
            connections.len()
        );
        connections.abort_all();
    }
}

/// Stops accepting, lets queued work finish (up to the drain timeout), and answers
/// `shutting_down` to new requests meanwhile. `owned_socket` is the socket file to remove:
/// `None` under socket activation, where systemd keeps the socket (and queues connections on
/// it) across restarts. The openpi listener accepts on until the drain is over, only to
/// answer 503: its `/healthz` then tells a load balancer that inferd is draining.
async fn drain(
    ctx: &Context,
    listeners: Listeners,
    served: &mut Served,
    signals: &mut Signals,
    owned_socket: Option<&Path>,
    signal: &str,
) {
    ctx.draining.store(true, Ordering::Release);
    ctx.scheduler.start_draining();
    ctx.metrics.set_state(State::Draining);
    crate::systemd::notify_stopping(&format!("{signal}: draining"));
    let Listeners { unix, openpi } = listeners;
    drop(unix);
    if let Some(socket) = owned_socket {
        if let Err(e) = std::fs::remove_file(socket) {
            log::warn!("could not remove {}: {e}", socket.display());
        }
    }
    let timeout = ctx.config.drain_timeout();
    log::info!(
        "{signal}: draining {} queued requests (up to {timeout:?}); new requests get shutting_down",
        ctx.ledger.in_flight()
    );
    let started = Instant::now();
    let mut abandoned = false;
    while ctx.ledger.in_flight() > 0 {
        if !abandoned && started.elapsed() >= timeout {
            log::warn!(
                "drain timeout: answering {} unfinished requests shutting_down",
                ctx.ledger.in_flight()
            );
            ctx.scheduler.abandon_queued();
            abandoned = true;
        }
        if abandoned && started.elapsed() >= timeout + ABANDON_GRACE {
            log::error!(
                "{} requests still computing; exiting without them",
                ctx.ledger.in_flight()
            );
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            incoming = accept_openpi(openpi.as_ref()) => served.openpi(incoming).await,
            Some(_) = served.connections.join_next(), if !served.connections.is_empty() => {}
            Some(event) = signals.events.recv() => {
                if let Event::Drain(name) = event {
                    if !abandoned {
                        log::warn!("{name} again: not waiting for queued work");
                        ctx.scheduler.abandon_queued();
                        abandoned = true;
                    }
                }
            }
        }
    }
    log::info!("drained in {:?}", started.elapsed());
}

/// What a connection's read gave, under `--idle-timeout-seconds`.
pub(crate) enum Read<T> {
    /// The next item of the stream.
    Item(T),
    /// Nothing came within the idle timeout.
    Idle,
    /// The stream ended.
    End,
}

/// The next item of a connection's stream (frames or websocket messages), or `Idle` when
/// `idle` passes first: one idle rule for both listeners.
pub(crate) async fn read_or_idle<S>(stream: &mut S, idle: Option<Duration>) -> Read<S::Item>
where
    S: futures_util::Stream + Unpin,
{
    let next = match idle {
        Some(limit) => match tokio::time::timeout(limit, stream.next()).await {
            Ok(next) => next,
            Err(_) => return Read::Idle,
        },
        None => stream.next().await,
    };
    next.map_or(Read::End, Read::Item)
}

/// Tells a connection over the limit why it is refused, then closes it.
async fn refuse_connection(mut stream: UnixStream, limit: usize) {
    let message = format!("too many connections (--max-connections {limit}); try again later");
    log::warn!("refused a connection: {message}");
    let frame = ServerMessage::Error(ErrorReply {
        id: None,
        code: ErrorCode::Overloaded,
        message,
    })
    .encode();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame)).await;
}

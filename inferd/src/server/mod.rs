//! The daemon: segment, model, workers and socket, from start to a drained exit.

mod connection;
mod listener;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_layout::State;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use self::listener::bind;
use crate::config::{Config, IO_THREADS};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::model::ModelStore;
use crate::protocol::{ErrorCode, ErrorReply, ServerMessage};
use crate::scheduler::{BatchPolicy, Scheduler};
use crate::signals::{Event, Signals};
use crate::{Error, Result};

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
        ctx.metrics.set_state(State::Ready);
        let status = format!(
            "ready on {} with {} workers, batches of up to {}, queue of {}",
            socket.display(),
            ctx.config.workers,
            ctx.config.max_batch_size,
            ctx.config.queue_capacity
        );
        log::info!("{status}");
        crate::systemd::notify_ready(&status);
        accept_until_drained(&ctx, listener, &mut signals, owned_socket).await;
        Ok::<(), Error>(())
    });
    ctx.scheduler.stop();
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn accept_until_drained(
    ctx: &Arc<Context>,
    listener: UnixListener,
    signals: &mut Signals,
    owned_socket: Option<&Path>,
) {
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accepted = 0u64;
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
            incoming = listener.accept() => match incoming {
                Ok((stream, _)) => {
                    accepted += 1;
                    let Some(slot) = ctx.ledger.connect(ctx.config.max_connections) else {
                        tokio::spawn(refuse_connection(stream, ctx.config.max_connections));
                        continue;
                    };
                    let (ctx, closing) = (Arc::clone(ctx), closing.clone());
                    connections.spawn(async move {
                        connection::serve(stream, ctx, closing, accepted).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drain(ctx, listener, signals, owned_socket, signal_name).await;
    let _ = closing_tx.send(true);
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
/// it) across restarts.
async fn drain(
    ctx: &Context,
    listener: UnixListener,
    signals: &mut Signals,
    owned_socket: Option<&Path>,
    signal: &str,
) {
    ctx.draining.store(true, Ordering::Release);
    ctx.scheduler.start_draining();
    ctx.metrics.set_state(State::Draining);
    crate::systemd::notify_stopping(&format!("{signal}: draining"));
    drop(listener);
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

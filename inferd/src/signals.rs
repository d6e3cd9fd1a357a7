//! SIGTERM, SIGINT and SIGHUP, turned into events for the server (signal-hook).

use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals as SignalIterator};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::{Error, Result};

/// What a signal asks of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT: drain and exit. A second one stops waiting for queued work.
    Drain(&'static str),
    /// SIGHUP: reload the model.
    Reload,
}

/// Tells whoever waits that the process has been asked to drain: nothing is ever sent on the
/// channel; the sender is dropped, which wakes every receiver at once and keeps them ready.
struct DrainNotice {
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

/// Process-wide, as the signals themselves are. The compute workers wait on it while a batch
/// fills (a drain must not wait out `--max-queue-delay-us`), and the server hands them no
/// drain handle of its own.
static DRAIN_NOTICE: OnceLock<DrainNotice> = OnceLock::new();

fn drain_notice() -> &'static DrainNotice {
    DRAIN_NOTICE.get_or_init(|| {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        DrainNotice {
            sender: Mutex::new(Some(sender)),
            receiver,
        }
    })
}

/// A receiver that becomes ready (disconnected) once SIGTERM or SIGINT has reached this
/// process, and stays ready.
pub(crate) fn drain_started() -> Receiver<()> {
    drain_notice().receiver.clone()
}

/// Wakes every [`drain_started`] receiver, now and later.
fn announce_drain() {
    drop(
        drain_notice()
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
}

/// Signal handlers installed for the server's lifetime; dropping this uninstalls them.
pub struct Signals {
    /// The events, in arrival order.
    pub events: UnboundedReceiver<Event>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Signals {
    /// Installs the handlers. Done first thing, so that a SIGTERM during startup drains the
    /// server as soon as it serves instead of killing it mid-way.
    pub fn install() -> Result<Signals> {
        let mut iter =
            SignalIterator::new([SIGTERM, SIGINT, SIGHUP]).map_err(Error::io("signal handlers"))?;
        let handle = iter.handle();
        let (tx, events) = unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("inferd-signals".into())
            .spawn(move || {
                for signal in iter.forever() {
                    let event = match signal {
                        SIGHUP => Event::Reload,
                        SIGINT => Event::Drain("SIGINT"),
                        _ => Event::Drain("SIGTERM"),
                    };
                    if let Event::Drain(_) = event {
                        // Before the server hears of it, so that no batch starts waiting to
                        // fill once the drain has begun.
                        announce_drain();
                    }
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            })
            .map_err(Error::io("signal thread"))?;
        Ok(Signals {
            events,
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! SIGTERM, SIGINT and SIGHUP, turned into events for the server (signal-hook).

use std::thread::JoinHandle;

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

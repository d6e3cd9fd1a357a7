//! A connection's outgoing messages: answers from the workers and refusals from its reader,
//! on their way to its writer task, with a count that lets the reader stop reading while the
//! client is not reading its answers. A Unix-socket connection's messages are whole frames,
//! written as bytes; a websocket's are sent as websocket messages, binary or text.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{Sink, SinkExt};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite;

/// Most messages the writer gathers into one write.
const WRITE_BATCH_FRAMES: usize = 64;

/// One message on its way to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Bytes: a whole frame, prefix included, on the Unix socket; a binary message on a
    /// websocket.
    Binary(Vec<u8>),
    /// A websocket text message: how openpi's client expects an error.
    Text(String),
}

impl Outgoing {
    /// The message's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Binary(b) => b,
            Outgoing::Text(t) => t.as_bytes(),
        }
    }

    fn into_websocket(self) -> tungstenite::Message {
        match self {
            Outgoing::Binary(b) => tungstenite::Message::Binary(b.into()),
            Outgoing::Text(t) => tungstenite::Message::Text(t.into()),
        }
    }
}

impl From<Vec<u8>> for Outgoing {
    fn from(bytes: Vec<u8>) -> Outgoing {
        Outgoing::Binary(bytes)
    }
}

#[derive(Debug, Default)]
struct State {
    queued: AtomicUsize,
    written: Notify,
    closed: AtomicBool,
}

/// The sending side; cheap to clone, one clone per request in flight.
#[derive(Clone, Debug)]
pub struct Outbox {
    frames: UnboundedSender<Outgoing>,
    state: Arc<State>,
}

/// The writer task's side.
pub struct Writer {
    frames: UnboundedReceiver<Outgoing>,
    state: Arc<State>,
}

/// A new outbox and the writer that empties it.
pub fn outbox() -> (Outbox, Writer) {
    let (tx, rx) = unbounded_channel();
    let state = Arc::new(State::default());
    (
        Outbox {
            frames: tx,
            state: Arc::clone(&state),
        },
        Writer { frames: rx, state },
    )
}

impl Outbox {
    /// Queues a message for the writer. If the connection is gone the message is dropped: its
    /// request was recorded before it was sent.
    pub fn send(&self, message: impl Into<Outgoing>) {
        self.state.queued.fetch_add(1, Ordering::AcqRel);
        if self.frames.send(message.into()).is_err() {
            self.state.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until at most `limit` frames are waiting to be written. Returns `false` if the
    /// writer has stopped (the peer is gone), when there is no point reading more.
    pub async fn wait_below(&self, limit: usize) -> bool {
        loop {
            if self.state.closed.load(Ordering::Acquire) {
                return false;
            }
            if self.state.queued.load(Ordering::Acquire) <= limit {
                return true;
            }
            // A wake-up that came before this call is stored in the Notify, so none is lost.
            self.state.written.notified().await;
        }
    }
}

impl Writer {
    /// Writes frames as they come, gathering what is ready into one write, until every
    /// [`Outbox`] is dropped or a write fails.
    pub async fn run(mut self, mut socket: OwnedWriteHalf, connection: u64) {
        let mut frames = Vec::with_capacity(WRITE_BATCH_FRAMES);
        let mut buf = Vec::new();
        while self.frames.recv_many(&mut frames, WRITE_BATCH_FRAMES).await > 0 {
            let bytes = match &frames[..] {
                [one] => one.bytes(),
                many => {
                    buf.clear();
                    many.iter().for_each(|f| buf.extend_from_slice(f.bytes()));
                    &buf[..]
                }
            };
            if let Err(e) = socket.write_all(bytes).await {
                log::debug!("connection {connection}: write failed, dropping its answers: {e}");
                break;
            }
            self.written(frames.len());
            frames.clear();
        }
        self.stopped();
        let _ = socket.shutdown().await;
    }

    /// Sends messages on a websocket as they come, flushing what is ready at once, until every
    /// [`Outbox`] is dropped or a send fails. Returns the sink, for the connection to close
    /// the websocket with the code it chooses.
    pub async fn run_websocket<S>(mut self, mut sink: S, connection: u64) -> S
    where
        S: Sink<tungstenite::Message, Error = tungstenite::Error> + Unpin,
    {
        let mut messages = Vec::with_capacity(WRITE_BATCH_FRAMES);
        while self
            .frames
            .recv_many(&mut messages, WRITE_BATCH_FRAMES)
            .await
            > 0
        {
            let count = messages.len();
            let mut sent = Ok(());
            for message in messages.drain(..) {
                sent = sink.feed(message.into_websocket()).await;
                if sent.is_err() {
                    break;
                }
            }
            if let Err(e) = sent.and(sink.flush().await) {
                log::debug!("connection {connection}: send failed, dropping its answers: {e}");
                break;
            }
            self.written(count);
        }
        self.stopped();
        sink
    }

    fn written(&self, count: usize) {
        self.state.queued.fetch_sub(count, Ordering::AcqRel);
        self.state.written.notify_one();
    }

    fn stopped(&self) {
        self.state.closed.store(true, Ordering::Release);
        self.state.written.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_reader_waits_while_the_peer_does_not_read() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (outbox, writer) = outbox();
        let task = tokio::spawn(writer.run(write, 0));
        // Far more than the socket buffers hold, and nobody reading.
        for _ in 0..2000 {
            outbox.send(vec![7u8; 4096]);
        }
        let blocked = tokio::time::timeout(Duration::from_millis(300), outbox.wait_below(10)).await;
        assert!(
            blocked.is_err(),
            "the backlog cannot drain while the peer does not read"
        );
        let mut sink = vec![0u8; 1 << 16];
        let reading = tokio::spawn(async move {
            let mut total = 0usize;
            while total < 2000 * 4096 {
                total += theirs.read(&mut sink).await.unwrap();
            }
            theirs
        });
        assert!(outbox.wait_below(10).await);
        let _peer = reading.await.unwrap();
        drop(outbox);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_peer_releases_the_reader() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        drop(theirs);
        let (outbox, writer) = outbox();
        let task = tokio::spawn(writer.run(write, 0));
        for _ in 0..100 {
            outbox.send(vec![1u8; 1024]);
        }
        assert!(!outbox.wait_below(0).await, "a failed writer says so");
        task.await.unwrap();
    }
}

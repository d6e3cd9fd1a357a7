//! The benchmark's baseline: a minimal Unix-socket server that sends the same metadata frame
//! inferd would, then sends every frame straight back. What a client measures against it is
//! the cost of the socket and the frames alone: the limit of the machine.

use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::FramedRead;

use crate::backend::{BackendKind, ModelSource};
use crate::config::Config;
use crate::model::metadata_frame;
use crate::protocol::{FrameCodec, DEFAULT_MAX_FRAME_BYTES};
use crate::safety::SafetyFilter;
use crate::{Error, Result};

/// The metadata frame inferd sends for the demo policy under default options.
pub fn demo_metadata_frame() -> Result<Vec<u8>> {
    let config = Config::parse_from_args(["inferd"])?;
    let backend = BackendKind::Cpu.load(&ModelSource::Demo)?;
    let meta = backend.metadata();
    let safety = SafetyFilter::new(meta.action_limits.clone(), meta.signature.action_width())
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(metadata_frame(&config, meta, &safety))
}

/// Serves the echo protocol on `path` until the process ends.
pub async fn serve_echo(path: &Path) -> Result<()> {
    let metadata = demo_metadata_frame()?;
    let listener =
        tokio::net::UnixListener::from_std(crate::server::bind(path)?).map_err(Error::io(path))?;
    log::info!("echo server on {}", path.display());
    loop {
        let (stream, _) = listener.accept().await.map_err(Error::io(path))?;
        tokio::spawn(echo(stream, metadata.clone()));
    }
}

async fn echo(stream: UnixStream, metadata: Vec<u8>) {
    let (reader, mut writer) = stream.into_split();
    if writer.write_all(&metadata).await.is_err() {
        return;
    }
    let mut frames = FramedRead::new(reader, FrameCodec::new(DEFAULT_MAX_FRAME_BYTES));
    let mut out = Vec::new();
    while let Some(Ok(body)) = frames.next().await {
        out.clear();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        if writer.write_all(&out).await.is_err() {
            return;
        }
    }
}

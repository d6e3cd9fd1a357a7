//! `exporter`: serves inferd's metrics to Prometheus. See `exporter --help`.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use exporter::{Exporter, Format, NvmlSource, Options};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let options = Options::parse();
    let exporter = Exporter::new(&options, Box::new(NvmlSource::new()))?;
    if options.once {
        // Give the sampler one interval so the page carries a GPU sample.
        std::thread::sleep(options.nvml_interval() + std::time::Duration::from_millis(200));
        let page = exporter.metrics(Format::Prometheus);
        std::io::stdout()
            .write_all(page.as_bytes())
            .context("writing to stdout")?;
        return Ok(());
    }
    let listener = exporter::bind(&options.listen)?;
    let addr = listener.local_addr().context("reading the bound address")?;
    log::info!("listening on http://{addr}/metrics");
    let rt = exporter::runtime()?;
    rt.block_on(exporter::serve(
        listener,
        Arc::new(exporter),
        shutdown_signal(),
    ))?;
    log::info!("stopped");
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot install signal handlers ({e}); stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

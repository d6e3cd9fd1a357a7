//! `exporter`: serves inferd's metrics to Prometheus. See `exporter --help`.
//!
//! Exit status: 0 after `--help`, `--version`, `--once` or SIGTERM; 78 (`EX_CONFIG` of
//! sysexits.h) when the configuration is wrong, so that systemd's `RestartPreventExitStatus=78`
//! does not restart a typo in a loop; 1 for anything else. A failure is one line on stderr.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use exporter::{Exporter, Format, HttpLimits, NvmlSource, Options, WebConfigFile};

/// `EX_CONFIG`: the configuration is wrong; restarting with it cannot help.
const EX_CONFIG: u8 = 78;

/// Why the exporter stopped, which its exit status tells.
enum Failure {
    /// A flag, its value, or what it names (an address, a pattern) is wrong.
    Config(String),
    /// Anything else.
    Runtime(String),
}

impl From<exporter::Error> for Failure {
    fn from(e: exporter::Error) -> Failure {
        if e.is_config() {
            Failure::Config(e.to_string())
        } else {
            Failure::Runtime(e.to_string())
        }
    }
}

fn main() -> ExitCode {
    let result = Options::try_parse()
        .map_err(usage_error)
        .and_then(|options| {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            run(&options)
        });
    let (code, message) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Config(message)) => (EX_CONFIG, message),
        Err(Failure::Runtime(message)) => (1, message),
    };
    eprintln!("exporter: {message}");
    ExitCode::from(code)
}

/// A clap error as one line; `--help` and `--version` print and exit 0 here, as clap would.
fn usage_error(e: clap::Error) -> Failure {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    // The first line says what is wrong; the rest is usage and a pointer to --help.
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    Failure::Config(line.strip_prefix("error: ").unwrap_or(line).to_owned())
}

fn run(options: &Options) -> Result<(), Failure> {
    if options.once {
        let exporter = Exporter::new(options, Box::new(NvmlSource::new()))?;
        // Two intervals: GPM's figures need a second sample one interval after the first, and
        // loading NVML delays the first pass by an unknown amount.
        std::thread::sleep(2 * options.nvml_interval() + std::time::Duration::from_millis(200));
        let page = exporter.metrics(Format::Prometheus);
        return std::io::stdout()
            .write_all(&page)
            .map_err(|e| Failure::Runtime(format!("writing to stdout: {e}")));
    }
    // Read and bound before anything starts, so that a bad web config or address fails alone,
    // with nothing logged.
    let web = options
        .web_config_file
        .as_ref()
        .map(|path| WebConfigFile::load(path).map(Arc::new))
        .transpose()?;
    let listener = exporter::bind(&options.listen)?;
    let exporter = Exporter::new(options, Box::new(NvmlSource::new()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(format!("reading the bound address: {e}")))?;
    let scheme = match &web {
        Some(web) if web.serves_tls() => "https",
        _ => "http",
    };
    log::info!("listening on {scheme}://{addr}/metrics");
    if let Some(web) = &web {
        let users = !web.current().auth().is_empty();
        log::info!(
            "web config {}: TLS {}, basic auth {}",
            web.path().display(),
            if web.serves_tls() { "on" } else { "off" },
            if users { "on" } else { "off" }
        );
        if users && !web.serves_tls() {
            log::warn!("basic auth without tls_server_config sends passwords in clear text");
        }
    }
    let rt = exporter::runtime()?;
    rt.block_on(exporter::serve(
        listener,
        Arc::new(exporter),
        HttpLimits::new(options),
        web,
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

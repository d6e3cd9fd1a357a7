//! `inferctl`: talk to inferd from a shell: `info`, `infer`, `bench`, and `echo-serve` (the
//! benchmark's baseline server).

use std::fmt::Write as _;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use inferd::{BenchOptions, Client};

/// Talks to inferd over its Unix socket.
#[derive(Parser)]
#[command(name = "inferctl", version)]
struct Cli {
    /// inferd's socket. Default: the path inferd itself defaults to here, or
    /// /run/inferd/inferd.sock if only that one exists.
    #[arg(long, global = true, value_name = "PATH", env = "INFERD_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the server's metadata: protocol, model, inputs, outputs, action limits.
    Info(InfoArgs),
    /// Send one observation and print the actions and timings.
    Infer(InferArgs),
    /// Generate load and print throughput, latency percentiles and errors by code.
    Bench(BenchArgs),
    /// Serve the benchmark's echo baseline on --socket: inferd's metadata frame, then every
    /// frame sent straight back.
    EchoServe,
}

#[derive(Args)]
struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InferArgs {
    /// Observation values, comma-separated; default: zeros of the model's input width.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "X,.."
    )]
    obs: Vec<f32>,
    /// Deadline, microseconds from the server's receipt.
    #[arg(long, value_name = "US")]
    deadline_us: Option<u64>,
    /// Robot type to announce in a hello first.
    #[arg(long)]
    robot_type: Option<String>,
    /// Robot id to announce with the robot type.
    #[arg(long, requires = "robot_type")]
    robot_id: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offered rate over all connections, requests/s (open loop). Default: closed loop.
    #[arg(long, value_name = "RPS")]
    rate: Option<f64>,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_seconds: f64,
    /// Unmeasured warm-up before it, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Deadline sent with each request, microseconds.
    #[arg(long, value_name = "US")]
    deadline_us: Option<u64>,
    /// Robot type announced on each connection.
    #[arg(long)]
    robot_type: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn socket(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    let default = inferd::default_socket_path();
    let system = PathBuf::from("/run/inferd/inferd.sock");
    if !default.exists() && system.exists() {
        return system;
    }
    default
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("--{name} must be a non-negative number of seconds"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let path = socket(&cli);
    match cli.command {
        Command::Info(args) => info(&path, args).await,
        Command::Infer(args) => infer(&path, args).await,
        Command::Bench(args) => bench(path, args).await,
        Command::EchoServe => echo_serve(&path).await,
    }
}

/// The error says which socket, since the default one depends on the environment.
async fn connect(path: &Path) -> anyhow::Result<Client> {
    Client::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))
}

async fn info(path: &Path, args: InfoArgs) -> anyhow::Result<()> {
    let client = connect(path).await?;
    let m = client.metadata();
    if args.json {
        print(serde_json::to_string_pretty(&metadata_json(m))?)
    } else {
        print(metadata_text(m)?)
    }
}

async fn infer(path: &Path, args: InferArgs) -> anyhow::Result<()> {
    let mut client = connect(path).await?;
    if let Some(rt) = &args.robot_type {
        client.hello(rt, args.robot_id.as_deref()).await?;
    }
    let width = client.input_width();
    let obs = if args.obs.is_empty() {
        vec![0.0; width]
    } else {
        args.obs
    };
    if obs.len() != width {
        bail!("--obs has {} values; the model takes {width}", obs.len());
    }
    let r = client.infer(&obs, args.deadline_us).await?;
    let (name, actions) = r
        .outputs
        .first()
        .map(|(n, t)| (n.as_str(), &t.data[..]))
        .unwrap_or(("", &[]));
    if args.json {
        print(serde_json::json!({
            "id": r.id,
            name: actions,
            "timing": {"queue_us": r.timing.queue_us, "compute_us": r.timing.compute_us, "total_us": r.timing.total_us},
        }))
    } else {
        print(format_args!(
            "{name} {actions:?}\ntiming queue {} us, compute {} us, total {} us",
            r.timing.queue_us, r.timing.compute_us, r.timing.total_us
        ))
    }
}

async fn bench(path: PathBuf, args: BenchArgs) -> anyhow::Result<()> {
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    let opts = BenchOptions {
        socket: path,
        connections: args.connections,
        rate_rps: args.rate,
        duration: seconds("duration-seconds", args.duration_seconds)?,
        warmup: seconds("warmup-seconds", args.warmup_seconds)?,
        deadline_us: args.deadline_us,
        robot_type: args.robot_type,
    };
    let report = inferd::run_bench(&opts).await?;
    if args.json {
        print(serde_json::to_string(&report)?)
    } else {
        print(report.render())
    }
}

async fn echo_serve(path: &Path) -> anyhow::Result<()> {
    env_logger::Builder::new().parse_filters("info").init();
    inferd::serve_echo(path).await?;
    Ok(())
}

/// Writes `text` and a newline to stdout. A reader that has gone (`inferctl info | head -n 1`)
/// ends the program quietly with status 0: it has read what it wanted, and `println!` would
/// have panicked instead.
fn print(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

fn metadata_text(m: &inferd::protocol::Metadata) -> Result<String, std::fmt::Error> {
    let mut t = String::new();
    writeln!(
        t,
        "server    {} (protocol {})",
        m.server, m.protocol_version
    )?;
    writeln!(
        t,
        "model     {} version {} on {}/{}",
        m.model.name, m.model.version, m.model.backend, m.model.device
    )?;
    for s in &m.inputs {
        writeln!(t, "input     {} {} {:?}", s.name, s.dtype, s.shape)?;
    }
    for s in &m.outputs {
        writeln!(t, "output    {} {} {:?}", s.name, s.dtype, s.shape)?;
    }
    match &m.action_limits {
        Some(l) => writeln!(t, "limits    low {:?}\n          high {:?}", l.low, l.high)?,
        None => writeln!(t, "limits    none")?,
    }
    write!(
        t,
        "frames    up to {} bytes, {} in flight per connection, batches of up to {} observations",
        m.max_frame_bytes, m.max_in_flight, m.max_batch_size
    )?;
    Ok(t)
}

fn metadata_json(m: &inferd::protocol::Metadata) -> serde_json::Value {
    let specs = |list: &[inferd::protocol::TensorSpec]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|s| serde_json::json!({"name": s.name, "dtype": s.dtype, "shape": s.shape}))
            .collect()
    };
    serde_json::json!({
        "protocol_version": m.protocol_version,
        "server": m.server,
        "model": {"name": m.model.name, "version": m.model.version, "backend": m.model.backend, "device": m.model.device},
        "inputs": specs(&m.inputs),
        "outputs": specs(&m.outputs),
        "action_limits": m.action_limits.as_ref().map(|l| serde_json::json!({"low": l.low, "high": l.high})),
        "max_frame_bytes": m.max_frame_bytes,
        "max_in_flight": m.max_in_flight,
        "max_batch_size": m.max_batch_size,
    })
}

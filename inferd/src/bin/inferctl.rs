//! `inferctl`: talk to inferd from a shell: `info`, `infer`, `bench`, and `echo-serve` (the
//! benchmark's baseline server).

use std::fmt::Write as _;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use inferd::protocol::{Input, Metadata, TensorSpec, DTYPE_F32};
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
    /// Send one observation and print every output and the timings. A one-input float32
    /// model takes --obs (default zeros); any other gets synthetic inputs made from the
    /// metadata (the first of `bench`'s).
    Infer(InferArgs),
    /// Generate load and print throughput, latency percentiles and errors by code. Each
    /// connection sends synthetic inputs made from the metadata: every input of its dtype and
    /// shape, pseudo-random values that differ by connection, prompts in turn.
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
    /// Observation values of a one-input model, comma-separated; default: zeros of its
    /// input width, or for a model of other inputs, synthetic ones.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "X,.."
    )]
    obs: Vec<f32>,
    /// The text of every text input (such as `prompt`) instead of a synthetic one.
    #[arg(long, conflicts_with = "obs")]
    prompt: Option<String>,
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
    let r = if takes_one_vector(client.metadata()) {
        let width = client.input_width();
        let obs = if args.obs.is_empty() {
            vec![0.0; width]
        } else {
            args.obs
        };
        if obs.len() != width {
            bail!("--obs has {} values; the model takes {width}", obs.len());
        }
        client.infer(&obs, args.deadline_us).await?
    } else {
        if !args.obs.is_empty() {
            bail!(
                "--obs is for a model of one float32 vector; this one takes {}: leave --obs out                  to send synthetic inputs",
                signature_text(client.metadata())
            );
        }
        let mut inputs = client.synthetic_inputs(0)?;
        if let Some(prompt) = &args.prompt {
            for (_, input) in &mut inputs {
                if let Input::Text(text) = input {
                    text.clone_from(prompt);
                }
            }
        }
        client.infer_inputs(&inputs, args.deadline_us).await?
    };
    if args.json {
        let mut answer = serde_json::Map::new();
        answer.insert("id".into(), r.id.into());
        for (name, t) in &r.outputs {
            answer.insert(name.clone(), nested(&t.to_f32(), &t.shape));
        }
        answer.insert(
            "timing".into(),
            serde_json::json!({"queue_us": r.timing.queue_us, "compute_us": r.timing.compute_us, "total_us": r.timing.total_us}),
        );
        print(serde_json::Value::Object(answer))
    } else {
        let mut text = String::new();
        for (name, t) in &r.outputs {
            let values = t.to_f32();
            match &t.shape[..] {
                [] | [_] => writeln!(text, "{name} {values:?}")?,
                [rows, ..] => {
                    writeln!(text, "{name} {} {:?}", t.dtype, t.shape)?;
                    for row in values.chunks((values.len() / rows.max(&1)).max(1)) {
                        writeln!(text, "  {row:?}")?;
                    }
                }
            }
        }
        write!(
            text,
            "timing queue {} us, compute {} us, total {} us",
            r.timing.queue_us, r.timing.compute_us, r.timing.total_us
        )?;
        print(text)
    }
}

/// Whether the model takes one float32 vector, as the protocol's first version did: `--obs`
/// is its observation.
fn takes_one_vector(m: &Metadata) -> bool {
    matches!(&m.inputs[..], [only] if only.dtype == DTYPE_F32 && only.shape.len() == 1)
}

/// `values` (row-major) as nested JSON arrays of `shape`: a flat list for a vector.
fn nested(values: &[f32], shape: &[usize]) -> serde_json::Value {
    match shape {
        [] => values
            .first()
            .map_or(serde_json::Value::Null, |&v| number(v)),
        [_] => values.iter().map(|&v| number(v)).collect(),
        [rows, inner @ ..] => {
            let step = (values.len() / (*rows).max(1)).max(1);
            values.chunks(step).map(|row| nested(row, inner)).collect()
        }
    }
}

/// A float32 as the JSON number of its shortest decimal form (`0.1`, not the float64
/// `0.10000000149011612` a plain conversion prints); null for NaN or infinity.
fn number(v: f32) -> serde_json::Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
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

/// One input or output as `inferctl info` prints it: `obs <f4 [48]`, or for text
/// `prompt str of at most 256 bytes`.
fn spec_text(s: &TensorSpec) -> String {
    match s.max_bytes {
        Some(n) if s.dtype == "str" => format!("{} str of at most {n} bytes", s.name),
        _ => format!("{} {} {:?}", s.name, s.dtype, s.shape),
    }
}

/// The inputs, for errors: `obs <f4 [48], prompt str of at most 256 bytes`.
fn signature_text(m: &Metadata) -> String {
    m.inputs
        .iter()
        .map(spec_text)
        .collect::<Vec<_>>()
        .join(", ")
}

fn metadata_text(m: &Metadata) -> Result<String, std::fmt::Error> {
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
        writeln!(t, "input     {}", spec_text(s))?;
    }
    for s in &m.outputs {
        let action = if s.name == m.action_output {
            " (action)"
        } else {
            ""
        };
        writeln!(t, "output    {}{action}", spec_text(s))?;
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

fn metadata_json(m: &Metadata) -> serde_json::Value {
    let specs = |list: &[TensorSpec]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|s| {
                let mut spec =
                    serde_json::json!({"name": s.name, "dtype": s.dtype, "shape": s.shape});
                if let Some(n) = s.max_bytes {
                    spec["max_bytes"] = n.into();
                }
                spec
            })
            .collect()
    };
    serde_json::json!({
        "protocol_version": m.protocol_version,
        "server": m.server,
        "model": {"name": m.model.name, "version": m.model.version, "backend": m.model.backend, "device": m.model.device},
        "inputs": specs(&m.inputs),
        "outputs": specs(&m.outputs),
        "action_output": m.action_output,
        "action_limits": m.action_limits.as_ref().map(|l| serde_json::json!({"low": l.low, "high": l.high})),
        "max_frame_bytes": m.max_frame_bytes,
        "max_in_flight": m.max_in_flight,
        "max_batch_size": m.max_batch_size,
    })
}

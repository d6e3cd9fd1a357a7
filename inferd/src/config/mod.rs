//! inferd's options: command-line flags (clap), and an optional TOML file whose keys are the
//! flags' long names (`file.rs`). What each numeric option accepts is in `range.rs`; the
//! openpi listener's options are in `openpi.rs`.

mod file;
mod openpi;
mod range;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::backend::{BackendKind, BackendOptions, Device, ModelSource};
use crate::signature::Signature;
use crate::socket_path::default_socket_path;
use crate::{Error, Result};

pub use self::openpi::{ApiKey, MAX_API_KEY_BYTES, OPENPI_ROBOT_TYPE};

/// Socket threads: receiving, decoding and answering is light work next to compute.
pub const IO_THREADS: usize = 2;

/// Everything inferd can be told. Every field is a flag; `--config FILE` may set any of them
/// with the same name (`max-batch-size = 32`), and a flag on the command line wins.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "inferd",
    version,
    about = "Serves a robot policy over a Unix socket, with batching, deadlines and metrics.",
    long_about = "Serves a robot policy over a Unix socket, with dynamic batching, deadlines, a \
                  safety filter, and every request recorded in a shared-memory metrics segment.\n\n\
                  With no arguments it serves a built-in demo policy on the CPU.\n\
                  Signals: SIGTERM or SIGINT drain and exit 0; SIGHUP reloads the model file.",
    args_override_self = true
)]
pub struct Config {
    /// TOML file of options, keyed by long flag name (e.g. `max-batch-size = 32`);
    /// flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Unix socket to listen on. Default: $XDG_RUNTIME_DIR/inferd.sock, or
    /// $RUNTIME_DIRECTORY/inferd.sock (/run/inferd/inferd.sock) under systemd, else
    /// /tmp/inferd-UID/inferd.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Name of the metrics segment file.
    #[arg(long, value_name = "NAME", default_value = shm_layout::DEFAULT_NAME)]
    pub segment_name: String,

    /// tmpfs directory holding the metrics segment.
    #[arg(long, value_name = "DIR", default_value = shm_layout::DEFAULT_DIR)]
    pub segment_dir: PathBuf,

    /// Policy file (safetensors, built-in MLP format). Without it, the built-in demo policy.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,

    /// Backend that runs the model: auto (cuda when a CUDA device and its libraries are
    /// present, else cpu), cpu, cuda (the built-in format on a GPU), or torch (a TorchScript
    /// `--model`, in builds with the `torch` feature).
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,

    /// Device to run on: auto, cpu, cuda or cuda:N. auto: device 0 for cuda; for torch, CUDA
    /// device 0 when libtorch sees one, else the CPU.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: Device,

    /// cuda backend: batches of up to this many rows replay a CUDA graph captured at load, one
    /// per batch size, which saves the launch of each kernel. 0: no graphs.
    #[arg(
        long,
        value_name = "ROWS",
        default_value_t = 16,
        value_parser = range::CUDA_GRAPH_MAX_BATCH.parser(),
    )]
    pub cuda_graph_max_batch: usize,

    /// Compute worker threads, each running one batch at a time. Two keep the model busy while
    /// the other hands its answers back.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = range::WORKERS.parser())]
    pub workers: usize,

    /// Largest batch, in observations.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 32,
        value_parser = range::MAX_BATCH_SIZE.parser(),
    )]
    pub max_batch_size: usize,

    /// How long a worker holding a request waits for more to fill its batch, microseconds
    /// (Triton's max_queue_delay_microseconds). 0: batch only what is already queued.
    #[arg(
        long,
        value_name = "US",
        default_value_t = 0,
        value_parser = range::MAX_QUEUE_DELAY_US.parser(),
    )]
    pub max_queue_delay_us: u64,

    /// Requests the queue holds; past it, requests are answered `overloaded` at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1024,
        value_parser = range::AT_LEAST_ONE.parser(),
    )]
    pub queue_capacity: usize,

    /// Open connections accepted; more are refused with `overloaded`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        value_parser = range::AT_LEAST_ONE.parser(),
    )]
    pub max_connections: usize,

    /// Requests one connection may have in flight; more are answered `overloaded`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        value_parser = range::AT_LEAST_ONE.parser(),
    )]
    pub max_in_flight: usize,

    /// Close a connection that sent nothing for this long and has nothing in flight,
    /// seconds. 0: never.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 300.0,
        value_parser = range::TIMEOUT_SECONDS.parser(),
    )]
    pub idle_timeout_seconds: f64,

    /// Largest frame body accepted, bytes; a larger one is answered `frame_too_large` and
    /// the connection closed. Default: what --max-batch-size observations of the model's
    /// inputs need, plus overhead (announced in the metadata frame).
    #[arg(
        long,
        value_name = "BYTES",
        value_parser = range::MAX_FRAME_BYTES.parser(),
    )]
    pub max_frame_bytes: Option<usize>,

    /// On SIGTERM/SIGINT, how long queued work may take to finish before what is left is
    /// answered `shutting_down`, seconds.
    #[arg(
        long,
        visible_alias = "drain-timeout",
        value_name = "SECONDS",
        default_value_t = 10.0,
        value_parser = range::TIMEOUT_SECONDS.parser(),
    )]
    pub drain_timeout_seconds: f64,

    /// Lower action bounds, comma-separated, one per action; overrides the model's own.
    #[arg(long, value_name = "X,..", value_delimiter = ',', allow_hyphen_values = true,
          action = clap::ArgAction::Set, num_args = 1, requires = "action_high")]
    pub action_low: Vec<f32>,

    /// Upper action bounds, comma-separated, one per action; overrides the model's own.
    #[arg(long, value_name = "X,..", value_delimiter = ',', allow_hyphen_values = true,
          action = clap::ArgAction::Set, num_args = 1, requires = "action_low")]
    pub action_high: Vec<f32>,

    /// Symmetric bound: clamp every action to [-X, X]; overrides the model's own.
    #[arg(
        long,
        value_name = "X",
        conflicts_with_all = ["action_low", "action_high"],
        value_parser = range::action_clip,
    )]
    pub action_clip: Option<f32>,

    /// Largest change of each action value from one step to the next: one value for every
    /// action dimension, or one per dimension, comma-separated, each >= 0. Default: no limit.
    ///
    /// It limits every step of a chunk against the step before it, and the first step of an
    /// answer against the last step answered on the same connection. A new connection starts
    /// free; so does each row of a batched request, which leaves the connection's last step as
    /// it was. `inf` leaves a dimension unlimited. Values it moves are counted apart from range
    /// clamps, as `inferd_safety_actions_clamped_total{kind="step_delta"}`.
    #[arg(
        long,
        value_name = "X[,X...]",
        value_delimiter = ',',
        allow_hyphen_values = true,
        action = clap::ArgAction::Set,
        num_args = 1,
        value_parser = range::step_delta,
    )]
    pub action_max_step_delta: Vec<f32>,

    /// Also serve openpi's websocket protocol (what openpi_client's WebsocketClientPolicy
    /// speaks) on this TCP address, with `GET /healthz` beside it: `PORT` alone is
    /// `127.0.0.1:PORT`; `ADDR:PORT` and `[IPV6]:PORT` bind that address. Off by default. An
    /// address that is not loopback needs --openpi-api-key. Its requests join the Unix
    /// socket's in the same queue, batches, limits and metrics.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = openpi::listen_address)]
    pub openpi_listen: Option<SocketAddr>,

    /// An API key the openpi listener requires (the handshake's `Authorization: Api-Key
    /// KEY`, what WebsocketClientPolicy(api_key=KEY) sends), and the robot type its
    /// connections' requests are counted under (default `openpi`). Repeatable, one key per
    /// robot type; with any key given, a handshake without one of them is answered 401.
    #[arg(
        long,
        value_name = "KEY[=ROBOT_TYPE]",
        action = clap::ArgAction::Append,
        value_parser = openpi::api_key,
    )]
    pub openpi_api_key: Vec<ApiKey>,

    /// Log filter: error, warn, info, debug, trace, or env_logger syntax (`inferd=debug`).
    #[arg(
        long,
        value_name = "FILTER",
        env = "INFERD_LOG",
        default_value = "info"
    )]
    pub log_level: String,
}

impl Config {
    /// Parses the process's arguments, merging the config file. `--help` and `--version` print
    /// clap's text and exit 0; a command line that does not parse prints clap's text (with its
    /// usage hint) and exits [`crate::EXIT_CONFIG`], as other configuration errors do.
    pub fn from_env() -> Result<Config> {
        match Config::parse_from_args(std::env::args_os()) {
            Err(Error::Cli(e)) if !e.use_stderr() => e.exit(),
            Err(Error::Cli(e)) => {
                let _ = e.print();
                std::process::exit(crate::EXIT_CONFIG.into())
            }
            other => other,
        }
    }

    /// Parses `args` (program name first), merging the config file if `--config` names one.
    /// A command line that does not parse (and `--help`, `--version`) is an [`Error::Cli`].
    pub fn parse_from_args<I, T>(args: I) -> Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let first = Config::try_parse_from(&args)?;
        let Some(file) = &first.config else {
            first.validate()?;
            return Ok(first);
        };
        let config = file::parse_with_file(&args, file)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what clap cannot, options that must agree with each other; clap has already
    /// checked each value on its own against its range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let runs_on_gpu = matches!(self.backend, BackendKind::Cuda);
        let runs_on_cpu = matches!(self.backend, BackendKind::Cpu);
        match self.device {
            Device::Cpu if runs_on_gpu => {
                return bad(
                    "--backend cuda runs on a GPU; --device cpu needs --backend cpu or torch"
                        .into(),
                )
            }
            Device::Cuda(_) if runs_on_cpu => {
                return bad(format!(
                    "--backend cpu cannot run on --device {}; use --backend cuda or torch",
                    self.device
                ))
            }
            _ => {}
        }
        openpi::validate(self.openpi_listen, &self.openpi_api_key).map_err(Error::Config)
    }

    /// What the backend is told: the device, and the workers and batch size it will serve.
    pub fn backend_options(&self) -> BackendOptions {
        BackendOptions {
            device: self.device,
            workers: self.workers,
            max_batch_rows: self.max_batch_size,
            cuda_graph_max_batch: self.cuda_graph_max_batch,
        }
    }

    /// Where the model comes from.
    pub fn model_source(&self) -> ModelSource {
        self.model
            .clone()
            .map_or(ModelSource::Demo, ModelSource::File)
    }

    /// The socket path: `--socket`, or the default for this environment.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }

    /// The configured action bounds for `width` actions, overriding the model's, if any.
    pub fn action_limits(&self, width: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        if let Some(clip) = self.action_clip {
            return Some((vec![-clip; width], vec![clip; width]));
        }
        (!self.action_low.is_empty()).then(|| (self.action_low.clone(), self.action_high.clone()))
    }

    /// `--action-max-step-delta`, if given: one value for every action dimension, or one per
    /// dimension (checked against the model's action width when it loads).
    pub fn max_step_delta(&self) -> Option<&[f32]> {
        (!self.action_max_step_delta.is_empty()).then_some(&self.action_max_step_delta[..])
    }

    /// `--max-frame-bytes`, or by default what `--max-batch-size` observations of
    /// `signature`'s inputs need plus overhead ([`Signature::default_max_frame_bytes`]).
    pub fn frame_limit(&self, signature: &Signature) -> usize {
        self.max_frame_bytes
            .unwrap_or_else(|| signature.default_max_frame_bytes(self.max_batch_size))
            .min(u32::MAX as usize)
    }

    /// `--idle-timeout-seconds`, or `None` for never.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.idle_timeout_seconds))
    }

    /// `--drain-timeout-seconds`.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_seconds)
    }

    /// `--max-queue-delay-us`.
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    pub(super) fn parse(args: &[&str]) -> Result<Config> {
        Config::parse_from_args(std::iter::once("inferd").chain(args.iter().copied()))
    }

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.model_source(), ModelSource::Demo);
        assert_eq!(c.segment_name, "inferd");
        assert_eq!(c.segment_dir, PathBuf::from("/dev/shm"));
        assert_eq!(
            (c.workers, c.max_batch_size, c.max_queue_delay_us),
            (2, 32, 0)
        );
        assert_eq!(c.max_frame_bytes, None);
        let demo = crate::MlpPolicy::demo().signature().unwrap();
        assert_eq!(
            c.frame_limit(&demo),
            crate::signature::FRAME_OVERHEAD_BYTES
                + crate::signature::INPUT_OVERHEAD_BYTES
                + 32 * 48 * 4
        );
        assert_eq!(c.action_limits(12), None);
        assert_eq!(c.max_step_delta(), None);
        assert_eq!(c.drain_timeout(), Duration::from_secs(10));
        assert_eq!(
            c.backend_options(),
            BackendOptions {
                device: Device::Auto,
                workers: 2,
                max_batch_rows: 32,
                cuda_graph_max_batch: 16,
            }
        );
    }

    #[test]
    fn backend_and_device_options_parse_and_must_agree() {
        let c = parse(&[
            "--backend",
            "cuda",
            "--device",
            "cuda:1",
            "--cuda-graph-max-batch",
            "0",
        ])
        .unwrap();
        assert_eq!(c.backend, BackendKind::Cuda);
        assert_eq!(c.backend_options().device, Device::Cuda(1));
        assert_eq!(c.backend_options().cuda_graph_max_batch, 0);
        let c = parse(&["--backend", "torch", "--device", "cpu"]).unwrap();
        assert_eq!(c.backend, BackendKind::Torch);
        for (args, want) in [
            (
                &["--backend", "cuda", "--device", "cpu"][..],
                "--backend cuda runs on a GPU",
            ),
            (
                &["--backend", "cpu", "--device", "cuda"],
                "cannot run on --device cuda:0",
            ),
            (&["--device", "gpu0"], "expected auto, cpu, cuda or cuda:N"),
            (
                &["--cuda-graph-max-batch", "4096"],
                "--cuda-graph-max-batch",
            ),
            (&["--backend", "tpu"], "invalid value"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_by_clap_naming_the_flag() {
        for (args, want) in [
            (
                &["--workers", "0"][..],
                "'0' for '--workers <N>': must be 1 to",
            ),
            (
                &["--workers", "99"],
                "'99' for '--workers <N>': must be 1 to",
            ),
            (
                &["--max-batch-size", "0"],
                "'--max-batch-size <N>': must be 1 to 1024",
            ),
            (
                &["--queue-capacity", "0"],
                "'--queue-capacity <N>': must be at least 1",
            ),
            (
                &["--max-connections", "0"],
                "'--max-connections <N>': must be at least 1",
            ),
            (
                &["--max-in-flight", "0"],
                "'--max-in-flight <N>': must be at least 1",
            ),
            (
                &["--max-frame-bytes", "10"],
                "'--max-frame-bytes <BYTES>': must be 64 to",
            ),
            (
                &["--drain-timeout=-1"],
                "'--drain-timeout-seconds <SECONDS>': must be 0 to",
            ),
            (
                &["--idle-timeout-seconds", "inf"],
                "'--idle-timeout-seconds <SECONDS>'",
            ),
            (
                &["--action-clip", "0"],
                "'--action-clip <X>': must be a positive number",
            ),
            (
                &["--max-queue-delay-us", "10000001"],
                "must be 0 to 10000000 (10 s)",
            ),
            (
                &["--action-max-step-delta", "0.1,-0.5"],
                "'-0.5' for '--action-max-step-delta <X[,X...]>': must be a number >= 0",
            ),
            (
                &["--action-max-step-delta", "NaN"],
                "'--action-max-step-delta <X[,X...]>': must be a number >= 0",
            ),
            (
                &["--action-max-step-delta", "0.1,,0.2"],
                "'--action-max-step-delta <X[,X...]>'",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(
                matches!(err, Error::Cli(_)),
                "{args:?}: a usage error, {err:?}"
            );
            let err = err.to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn options_that_go_together_are_checked_together() {
        for (args, want) in [
            (&["--action-low", "1"][..], "--action-high"),
            (
                &[
                    "--action-clip",
                    "1",
                    "--action-low",
                    "1",
                    "--action-high",
                    "2",
                ],
                "cannot be used with",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_step_delta_is_one_value_or_a_list_and_the_last_flag_wins() {
        let c = parse(&["--action-max-step-delta", "0.05"]).unwrap();
        assert_eq!(c.max_step_delta(), Some(&[0.05][..]));
        let c = parse(&["--action-max-step-delta", "0,0.5,inf"]).unwrap();
        assert_eq!(c.max_step_delta(), Some(&[0.0, 0.5, f32::INFINITY][..]));
        // Given twice, the second list replaces the first rather than extending it.
        let c = parse(&[
            "--action-max-step-delta",
            "1,2",
            "--action-max-step-delta=3",
        ])
        .unwrap();
        assert_eq!(c.max_step_delta(), Some(&[3.0][..]));
        // It goes with range limits: each is a clamp of its own.
        let c = parse(&["--action-clip", "1", "--action-max-step-delta", "0.1"]).unwrap();
        assert!(c.action_limits(2).is_some() && c.max_step_delta().is_some());
    }

    #[test]
    fn action_clip_is_symmetric() {
        let c = parse(&["--action-clip", "0.5"]).unwrap();
        assert_eq!(c.action_limits(2), Some((vec![-0.5, -0.5], vec![0.5, 0.5])));
    }

    #[test]
    fn help_documents_every_option() {
        let help = Config::command().render_long_help().to_string();
        for arg in Config::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    help.contains(&format!("--{long}")),
                    "--{long} missing from --help"
                );
                assert!(
                    arg.get_help().is_some() || arg.get_long_help().is_some(),
                    "--{long} has no help"
                );
            }
        }
    }
}

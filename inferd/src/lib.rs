//! inferd serves robot policies over a Unix socket: dynamic batching, deadlines, a safety
//! filter, and every request recorded in the shared-memory metrics segment (shm-layout).
//!
//! # Overview
//!
//! - [`Config`] is every option (clap flags, or a TOML file with the same keys).
//! - [`run`] is the daemon. It creates the segment, loads the model through a [`Backend`],
//!   starts compute workers behind a bounded queue, and serves the socket until SIGTERM
//!   drains it; SIGHUP reloads the model.
//! - Backends: [`CpuBackend`] runs the built-in [`MlpPolicy`] format on the CPU,
//!   [`CudaBackend`] runs the same format on a GPU (NVRTC kernels, cuBLAS, CUDA graphs for
//!   small batches), and `TorchBackend` (feature `torch`) runs TorchScript policies through
//!   libtorch. [`BackendKind`] and [`Device`] choose among them.
//! - Connections speak the [`protocol`] of `docs/protocol.md`: frames of msgpack maps with
//!   openpi's msgpack-numpy arrays (float32, float16, uint8, int8, int32, int64, bool) and
//!   text. Answers go back by id, so requests may be pipelined.
//! - With `--openpi-listen`, openpi robots connect unchanged: a websocket listener speaks
//!   openpi's protocol ([`protocol::openpi`]) and feeds its requests into the same queue,
//!   batches, limits and ledger as the Unix socket's; `GET /healthz` answers beside it.
//! - A model's [`signature`] names its inputs (arrays of a dtype and shape, or text) and
//!   outputs, and which output is the action. Each request is checked against it before it
//!   is queued, and its inputs are copied once, from their frame into the batch buffer, in
//!   the layout the backend takes ([`Layout`]).
//! - Every request is counted by one ledger entry, from the frame that carried it to its one
//!   answer: the ticket owns its in-flight and queue places and its one record into the
//!   segment (`ledger.rs`; `docs/design.md` draws the whole path).
//! - Workers batch requests from every robot as Triton's dynamic batcher does, refuse expired
//!   deadlines before compute, and pass every action output (a vector or an `[H, A]` chunk)
//!   through the [`SafetyFilter`].
//! - [`Client`] is the Rust client; [`run_bench`] and [`serve_echo`] are the load generator
//!   and the baseline server behind `inferctl bench` and `inferctl echo-serve`.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> inferd::Result<()> {
//! // A server started with `inferd --socket /tmp/inferd.sock` serves the demo policy.
//! let mut client = inferd::Client::connect("/tmp/inferd.sock").await?;
//! client.hello("anymal_c", Some("7")).await?;
//! let result = client.infer(&[0.0; 48], Some(10_000)).await?;
//! assert_eq!(result.outputs[0].1.shape, [12]);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

// The daemon: options, the server and its scheduler, the backends that run a policy, and the
// metrics segment it records into.
mod backend;
mod batch;
mod config;
mod error;
mod ledger;
mod logging;
mod metrics;
mod model;
mod outbox;
mod policy;
pub mod protocol;
mod safety;
mod scheduler;
mod server;
mod signals;
pub mod signature;
mod socket_path;
mod systemd;

// Client tooling, kept apart from the daemon: the client, the load generator and the echo
// baseline that `inferctl` drives.
mod tools;

// What the daemon offers.
#[cfg(feature = "torch")]
pub use crate::backend::TorchBackend;
pub use crate::backend::{
    cuda_device_count, Backend, BackendKind, BackendOptions, Batch, BatchInputs, BatchOutput,
    CpuBackend, CudaBackend, Device, Layout, ModelMetadata, ModelSource, StackedInput,
    UnknownDevice,
};
pub use crate::batch::Part;
pub use crate::config::{ApiKey, Config, IO_THREADS, MAX_API_KEY_BYTES, OPENPI_ROBOT_TYPE};
pub use crate::error::{Error, Result, EXIT_CONFIG};
pub use crate::logging::{init_logging, report_fatal};
pub use crate::policy::{
    Activation, FormatError, InvalidPolicy, Linear, MlpPolicy, NotSafetensors, ObsNormalization,
    UnknownActivation, DEFAULT_OBS_EPS, DEMO_WIDTHS, MAX_POLICY_FILE_BYTES, MLP_FORMAT,
    MLP_FORMAT_VERSION,
};
pub use crate::safety::{ActionBounds, Clamps, LimitsError, SafetyFilter, StepDeltaError, Verdict};
pub use crate::server::run;
pub use crate::socket_path::default_socket_path;

// What client tooling offers.
pub use crate::tools::bench::{run_bench, BenchOptions, BenchReport, Latency};
pub use crate::tools::client::{AnswerReceiver, Client, RequestSender, CLIENT_MAX_FRAME_BYTES};
pub use crate::tools::echo::{demo_metadata_frame, serve_echo};

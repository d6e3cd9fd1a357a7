//! The bounded label dimensions that are enums rather than registry slots.

/// How a request ended. The discriminant is the index in the segment's status dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Answered with outputs.
    Ok = 0,
    /// The request was malformed or did not match the model's inputs.
    InvalidInput = 1,
    /// The queue was full; rejected at once.
    Overloaded = 2,
    /// The deadline passed before compute started; never computed.
    DeadlineExceeded = 3,
    /// The backend failed.
    ModelError = 4,
    /// The daemon is draining.
    ShuttingDown = 5,
    /// The safety filter rejected the outputs (NaN or Inf).
    SafetyRejected = 6,
}

impl Status {
    /// Every status, in index order.
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::InvalidInput,
        Status::Overloaded,
        Status::DeadlineExceeded,
        Status::ModelError,
        Status::ShuttingDown,
        Status::SafetyRejected,
    ];

    /// The wire and label name, e.g. `deadline_exceeded`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::InvalidInput => "invalid_input",
            Status::Overloaded => "overloaded",
            Status::DeadlineExceeded => "deadline_exceeded",
            Status::ModelError => "model_error",
            Status::ShuttingDown => "shutting_down",
            Status::SafetyRejected => "safety_rejected",
        }
    }

    /// The index of this status in the segment's status dimension.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Parses a wire name back into a status.
    pub fn from_name(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Why the safety filter rejected an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SafetyReason {
    /// An output value was NaN.
    Nan = 0,
    /// An output value was infinite.
    Inf = 1,
}

impl SafetyReason {
    /// Every reason, in index order.
    pub const ALL: [SafetyReason; 2] = [SafetyReason::Nan, SafetyReason::Inf];

    /// The label name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SafetyReason::Nan => "nan",
            SafetyReason::Inf => "inf",
        }
    }
}

/// The writer's lifecycle state, kept in the header's `state` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum State {
    /// Zero, or a value this reader does not know.
    Unknown = 0,
    /// Created; the model is still loading.
    Starting = 1,
    /// Serving requests.
    Ready = 2,
    /// Draining after SIGTERM: no new connections, queued work finishing.
    Draining = 3,
    /// The writer exited cleanly.
    Stopped = 4,
}

impl State {
    /// Every known state, in value order.
    pub const ALL: [State; 5] = [
        State::Unknown,
        State::Starting,
        State::Ready,
        State::Draining,
        State::Stopped,
    ];

    /// Decodes a state word; anything unknown reads as [`State::Unknown`].
    pub const fn from_word(word: u32) -> State {
        match word {
            1 => State::Starting,
            2 => State::Ready,
            3 => State::Draining,
            4 => State::Stopped,
            _ => State::Unknown,
        }
    }

    /// The label name.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Stopped => "stopped",
        }
    }
}

/// What kind of thread owns a shard, kept in the shard's `kind` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ShardKind {
    /// Never claimed.
    Unused = 0,
    /// A compute worker: runs batches on the backend.
    Worker = 1,
    /// A connection thread: records requests refused before compute.
    Io = 2,
}

impl ShardKind {
    /// Decodes a kind word; anything unknown reads as [`ShardKind::Unused`].
    pub const fn from_word(word: u32) -> ShardKind {
        match word {
            1 => ShardKind::Worker,
            2 => ShardKind::Io,
            _ => ShardKind::Unused,
        }
    }

    /// The label name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ShardKind::Unused => "unused",
            ShardKind::Worker => "worker",
            ShardKind::Io => "io",
        }
    }
}

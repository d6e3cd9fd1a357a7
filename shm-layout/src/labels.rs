//! The bounded label dimensions that are enums rather than registry slots.

/// Defines a label enum whose discriminants are the words the segment stores, with `ALL` (every
/// value, in discriminant order) and `as_str` (its label name): one list, so the variants, the
/// words and the names cannot fall out of step.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        enum $name:ident: $repr:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $word:literal => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$variant_meta])* $variant = $word,)+
        }

        impl $name {
            /// Every value, in the order listed: the order of the words the segment stores.
            pub const ALL: [$name; [$($word),+].len()] = [$($name::$variant),+];

            /// The label value the exporter and `shmdump` print (for a [`Status`], its wire name too).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

label_enum! {
    /// How a request ended. The discriminant is the index in the segment's status dimension.
    enum Status: u8 {
        /// Answered with outputs.
        Ok = 0 => "ok",
        /// The request was malformed or did not match the model's inputs.
        InvalidInput = 1 => "invalid_input",
        /// The queue was full; rejected at once.
        Overloaded = 2 => "overloaded",
        /// The deadline passed before compute started; never computed.
        DeadlineExceeded = 3 => "deadline_exceeded",
        /// The backend failed.
        ModelError = 4 => "model_error",
        /// The daemon is draining.
        ShuttingDown = 5 => "shutting_down",
        /// The safety filter rejected the outputs (NaN or Inf).
        SafetyRejected = 6 => "safety_rejected",
    }
}

impl Status {
    /// The index of this status in the segment's status dimension.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Parses a wire name back into a status.
    pub fn from_name(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

label_enum! {
    /// Why the safety filter rejected an output.
    enum SafetyReason: u8 {
        /// An output value was NaN.
        Nan = 0 => "nan",
        /// An output value was infinite.
        Inf = 1 => "inf",
    }
}

label_enum! {
    /// What made the safety filter clamp an action value: the metrics' `kind` label. The two
    /// kinds are counted in fields of their own (`ModelStats::actions_clamped` and
    /// `actions_clamped_step_delta`), so the discriminant is only their order.
    enum ClampKind: u8 {
        /// Clamped to the configured range (`--action-low`/`--action-high`, `--action-clip`, or
        /// the model's limits).
        Range = 0 => "range",
        /// Clamped to within `--action-max-step-delta` of the step before it.
        StepDelta = 1 => "step_delta",
    }
}

label_enum! {
    /// The writer's lifecycle state, kept in the header's `state` word.
    enum State: u32 {
        /// Zero, or a value this reader does not know.
        Unknown = 0 => "unknown",
        /// Created; the model is still loading.
        Starting = 1 => "starting",
        /// Serving requests.
        Ready = 2 => "ready",
        /// Draining after SIGTERM: no new connections, queued work finishing.
        Draining = 3 => "draining",
        /// The writer exited cleanly.
        Stopped = 4 => "stopped",
    }
}

impl State {
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
}

label_enum! {
    /// What kind of thread owns a shard, kept in the shard's `kind` word.
    enum ShardKind: u32 {
        /// Never claimed.
        Unused = 0 => "unused",
        /// A compute worker: runs batches on the backend.
        Worker = 1 => "worker",
        /// A connection thread: records requests refused before compute.
        Io = 2 => "io",
    }
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
}

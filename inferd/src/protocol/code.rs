//! The error codes a server puts in `error.code`.

use std::fmt;

use shm_layout::Status;

/// Every code an error answer may carry. The first six are the segment's request statuses (a
/// request answered with one of them is counted under it); the last two end the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The message was malformed or did not match the model's inputs.
    InvalidInput,
    /// The queue was full, or the connection had too many requests in flight.
    Overloaded,
    /// The deadline passed before compute started; the request was never computed.
    DeadlineExceeded,
    /// The backend failed on the batch.
    ModelError,
    /// The daemon is draining and takes no new work.
    ShuttingDown,
    /// The outputs held NaN or Inf.
    SafetyRejected,
    /// The byte stream is not frames of msgpack maps; the connection is closed.
    ProtocolError,
    /// A frame's length prefix exceeds the server's maximum; the connection is closed.
    FrameTooLarge,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::InvalidInput,
        ErrorCode::Overloaded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::ModelError,
        ErrorCode::ShuttingDown,
        ErrorCode::SafetyRejected,
        ErrorCode::ProtocolError,
        ErrorCode::FrameTooLarge,
    ];

    /// The request status this code is counted under, or `None` for connection errors.
    pub const fn status(self) -> Option<Status> {
        match self {
            ErrorCode::InvalidInput => Some(Status::InvalidInput),
            ErrorCode::Overloaded => Some(Status::Overloaded),
            ErrorCode::DeadlineExceeded => Some(Status::DeadlineExceeded),
            ErrorCode::ModelError => Some(Status::ModelError),
            ErrorCode::ShuttingDown => Some(Status::ShuttingDown),
            ErrorCode::SafetyRejected => Some(Status::SafetyRejected),
            ErrorCode::ProtocolError | ErrorCode::FrameTooLarge => None,
        }
    }

    /// The code of a non-`ok` request status.
    pub const fn from_status(status: Status) -> Option<ErrorCode> {
        match status {
            Status::Ok => None,
            Status::InvalidInput => Some(ErrorCode::InvalidInput),
            Status::Overloaded => Some(ErrorCode::Overloaded),
            Status::DeadlineExceeded => Some(ErrorCode::DeadlineExceeded),
            Status::ModelError => Some(ErrorCode::ModelError),
            Status::ShuttingDown => Some(ErrorCode::ShuttingDown),
            Status::SafetyRejected => Some(ErrorCode::SafetyRejected),
        }
    }

    /// The wire name, e.g. `deadline_exceeded`; request codes share the segment's status names.
    pub const fn as_str(self) -> &'static str {
        match self.status() {
            Some(status) => status.as_str(),
            None => match self {
                ErrorCode::FrameTooLarge => "frame_too_large",
                _ => "protocol_error",
            },
        }
    }

    /// Parses a wire name.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether the server closes the connection after sending this code.
    pub const fn closes_connection(self) -> bool {
        self.status().is_none()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_statuses() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
            if let Some(status) = code.status() {
                assert_eq!(ErrorCode::from_status(status), Some(code));
                assert!(!code.closes_connection());
            }
        }
        assert_eq!(ErrorCode::from_status(Status::Ok), None);
        assert_eq!(ErrorCode::FrameTooLarge.as_str(), "frame_too_large");
        assert_eq!(ErrorCode::ProtocolError.as_str(), "protocol_error");
        assert!(ErrorCode::FrameTooLarge.closes_connection());
        assert_eq!(ErrorCode::from_name("ok"), None);
    }

    #[test]
    fn every_non_ok_status_has_a_code() {
        for status in Status::ALL {
            assert_eq!(
                ErrorCode::from_status(status).is_none(),
                status == Status::Ok
            );
        }
    }
}

//! inferd (work in progress).
#![deny(missing_docs)]
pub mod backend;
mod error;
pub mod policy;
pub mod protocol;
pub mod safety;
pub use crate::error::{Error, Result};

//! Filled in by the safety work.

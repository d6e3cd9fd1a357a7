//! Filled in by the multi-input work.

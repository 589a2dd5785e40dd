//! datasets crate.

//! pipeline library.

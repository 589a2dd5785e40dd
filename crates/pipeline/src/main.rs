//! vggtd binary.
fn main() {}

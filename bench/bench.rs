//! rookery's benchmark (in progress).
fn main() {}

//! Placeholder, replaced in a later commit.
fn main() {}

//! `desktop-trainer` (work in progress, issue #6).

fn main() {}

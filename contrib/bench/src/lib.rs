//! Shared by the benchmark's two binaries (`bench` and `forwarder`).

pub mod sys;

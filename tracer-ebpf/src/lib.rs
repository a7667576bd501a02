//! The eBPF side of flowtrace: small, boring, verifier-friendly.
//!
//! The programs live in `main.rs` (a `bin` target built for `bpfel-unknown-none` by aya-build);
//! this library exists so that `tracer` can declare a build-dependency on the crate.
#![no_std]

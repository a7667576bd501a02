//! flowtrace as a library: everything but the command-line entry point (`main.rs`), so that
//! the fuzz targets (tracer/fuzz) can reach the parsers they exercise.

pub mod cli;
pub mod correlate;
pub mod error;
pub mod events;
pub mod filter;
pub mod model;
pub mod output;
pub mod pcapfilter;
pub mod pipeline;
pub mod probe;
pub mod replay;
pub mod session;
pub mod target;
pub mod tui;

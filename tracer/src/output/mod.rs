//! Presenting what was traced: text for people, JSON lines for programs.

pub mod raw;

//! What flowtrace reads besides the kernel: recordings (`flowtrace read`). The pcapng format
//! itself, read and written, is `crate::pcapng`.

pub mod replay;

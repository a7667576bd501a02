//! Events from the kernel: reading the ring buffer, decoding records, parsing packets.

pub mod clock;
pub mod decode;
pub mod digits;
pub mod packet;
pub mod ringbuf;

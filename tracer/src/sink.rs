//! Where shown packets, flows and losses go: stdout (text or JSON lines), the recording
//! (`--write`) and the dashboard. The pipeline feeds every sink through this one trait and
//! knows none of them; each presenter implements it where it lives.

use std::io::{self, Write};

use crate::{
    correlate::explain::Explained,
    model::{FlowLine, Packet},
};

pub trait Sink: Send {
    /// A shown packet, as the model every presenter reads (and explained, for the recorder,
    /// which keeps each hop's bytes). `out` is stdout, for the sinks that print.
    fn packet(&mut self, e: &Explained, p: &Packet, out: &mut dyn Write) -> io::Result<()>;

    /// Whether [`Sink::packet`] is wanted: a `--flows` stdout prints flows only, and when no
    /// sink wants packets the pipeline does not build them.
    fn wants_packets(&self) -> bool {
        true
    }

    /// A flow that finished (`--flows`), or is still open at the end.
    fn flow(&mut self, _f: &FlowLine, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    /// `count` events were lost in the ring buffer (at `now_ns`, the monotonic clock).
    fn lost(&mut self, _now_ns: u64, _count: u64, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    /// Pushes out what is buffered (each tick).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// At the end: everything written where it goes.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }

    /// The recording's path and size so far, for the sink that writes one.
    fn recording(&self) -> Option<(String, u64)> {
        None
    }

    /// The dashboard owns the terminal until it closes; nothing else may print meanwhile.
    fn owns_terminal(&self) -> bool {
        false
    }
}

//! The stdout sink: each shown packet as text or as a JSON line, flows with `--flows`, and a
//! line when events are lost.

use std::io::{self, Write};

use super::Format;
use crate::{
    correlate::explain::Explained,
    model::{FlowLine, Packet},
    sink::Sink,
};

pub struct Stdout {
    format: Format,
    /// `--flows`: flows instead of packets.
    flow_mode: bool,
    /// A JSON line is written whole (serde writes it in many small pieces).
    line: Vec<u8>,
}

impl Stdout {
    pub fn new(format: Format, flow_mode: bool) -> Self {
        Self {
            format,
            flow_mode,
            line: Vec::with_capacity(4096),
        }
    }
}

impl Sink for Stdout {
    fn packet(&mut self, _: &Explained, p: &Packet, out: &mut dyn Write) -> io::Result<()> {
        match self.format {
            Format::Json => {
                self.line.clear();
                p.write_json(&mut self.line)?;
                self.line.push(b'\n');
                out.write_all(&self.line)
            }
            Format::Text => writeln!(out, "{}", super::text::packet(p)),
        }
    }

    fn wants_packets(&self) -> bool {
        !self.flow_mode
    }

    fn flow(&mut self, f: &FlowLine, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.format.flow(f))
    }

    fn lost(&mut self, _now_ns: u64, count: u64, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.format.lost(count))
    }
}

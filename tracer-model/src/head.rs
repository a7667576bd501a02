//! A packet without its hops, for a recording's first hop.

use serde::Serialize;

use crate::{Drop, Packet, Text};

/// A packet without its hops, borrowed: the JSON a recording's first hop carries (each hop's
/// block carries the hop itself). The fields, in order, are `Packet`'s but `hops`.
#[derive(Serialize)]
struct PacketHead<'a> {
    v: u32,
    time: &'a str,
    container: &'a Option<String>,
    way: &'a Option<Text>,
    proto: &'a Option<Text>,
    src: &'a Option<String>,
    dst: &'a Option<String>,
    len: u32,
    tcp_flags: &'a Option<String>,
    summary: &'a Option<String>,
    skb: &'a str,
    drop: &'a Option<Drop>,
}

impl Packet {
    /// Writes the packet without its hops as JSON (read back as a `Packet` with none).
    pub fn write_json_head(&self, w: impl std::io::Write) -> std::io::Result<()> {
        // A field added to Packet must be added here too: the recording's round-trip test
        // (tracer's output::record) fails otherwise.
        let head = PacketHead {
            v: self.v,
            time: &self.time,
            container: &self.container,
            way: &self.way,
            proto: &self.proto,
            src: &self.src,
            dst: &self.dst,
            len: self.len,
            tcp_flags: &self.tcp_flags,
            summary: &self.summary,
            skb: &self.skb,
            drop: &self.drop,
        };
        serde_json::to_writer(w, &head).map_err(std::io::Error::from)
    }
}

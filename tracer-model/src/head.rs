//! A packet without its hops, for a recording's first hop.

use serde::Serialize;

use crate::{Drop, Packet};

/// A packet without its hops, borrowed: the JSON a recording's first hop carries (each hop's
/// block carries the hop itself). The fields, in order, are `Packet`'s but `hops`.
#[derive(Serialize)]
struct PacketHead<'a> {
    v: u32,
    time: &'a str,
    container: &'a Option<String>,
    way: &'a Option<String>,
    proto: &'a Option<String>,
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
        let Packet {
            v,
            time,
            container,
            way,
            proto,
            src,
            dst,
            len,
            tcp_flags,
            summary,
            skb,
            hops: _,
            drop,
        } = self;
        let head = PacketHead {
            v: *v,
            time,
            container,
            way,
            proto,
            src,
            dst,
            len: *len,
            tcp_flags,
            summary,
            skb,
            drop,
        };
        serde_json::to_writer(w, &head).map_err(std::io::Error::from)
    }
}

//! A packet without its hops, for a recording's first hop, and a hop on its own, for each
//! hop's block: both written by hand as `json.rs` writes a packet's line (serde_json's bytes,
//! which the tests below hold them to).

use crate::{Hop, Packet};

impl Packet {
    /// Writes the packet without its hops as JSON (read back as a `Packet` with none).
    pub fn write_json_head(&self, w: &mut Vec<u8>) -> std::io::Result<()> {
        // A field added to Packet must be added here too: the recording's round-trip test
        // (tracer's output::record) fails otherwise.
        crate::json::head(w, self)
    }
}

impl Hop {
    /// Writes the hop as JSON, the bytes serde_json writes for it.
    pub fn write_json(&self, w: &mut Vec<u8>) -> std::io::Result<()> {
        crate::json::hop(w, self)
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use crate::{json::tests::odd_packets, Drop, Packet, Shared, Text};

    /// What the head was written from before: serde's bytes for a packet without its hops.
    #[derive(Serialize)]
    struct PacketHead<'a> {
        v: u32,
        time: &'a str,
        container: &'a Option<Shared>,
        way: &'a Option<Text>,
        proto: &'a Option<Text>,
        src: &'a Option<Shared>,
        dst: &'a Option<Shared>,
        len: u32,
        tcp_flags: &'a Option<String>,
        summary: &'a Option<String>,
        skb: &'a str,
        drop: &'a Option<Drop>,
    }

    fn serde_head(p: &Packet) -> String {
        serde_json::to_string(&PacketHead {
            v: p.v,
            time: &p.time,
            container: &p.container,
            way: &p.way,
            proto: &p.proto,
            src: &p.src,
            dst: &p.dst,
            len: p.len,
            tcp_flags: &p.tcp_flags,
            summary: &p.summary,
            skb: &p.skb,
            drop: &p.drop,
        })
        .unwrap()
    }

    /// The head and each hop, written by hand, are serde_json's bytes for them, with every
    /// optional field present and absent and strings that need escaping.
    #[test]
    fn the_head_and_the_hops_are_serdes() {
        for p in odd_packets() {
            let mut head = Vec::new();
            p.write_json_head(&mut head).unwrap();
            assert_eq!(String::from_utf8(head).unwrap(), serde_head(&p));
            for h in &p.hops {
                let mut hop = Vec::new();
                h.write_json(&mut hop).unwrap();
                assert_eq!(
                    String::from_utf8(hop).unwrap(),
                    serde_json::to_string(h).unwrap()
                );
            }
        }
    }
}

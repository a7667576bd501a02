//! Files from other writers: big-endian sections, several sections, other `if_tsresol` and
//! `if_tsoffset` values, blocks this crate never writes.

use super::*;

fn read_all(bytes: &[u8]) -> (Vec<Block>, Result<(), PcapngError>) {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    loop {
        match r.next_block() {
            Ok(Some(b)) => out.push(b),
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// A block in big-endian byte order.
fn be_block(block_type: u32, body: &[u8]) -> Vec<u8> {
    let len = (body.len() + 12) as u32;
    let mut v = block_type.to_be_bytes().to_vec();
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn be_opt(code: u16, value: &[u8]) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    v.resize(v.len().div_ceil(4) * 4, 0);
    v
}

fn be_shb() -> Vec<u8> {
    let mut body = vec![0x1A, 0x2B, 0x3C, 0x4D, 0, 1, 0, 0];
    body.extend_from_slice(&[0xFF; 8]);
    body.extend(be_opt(4, b"other tool"));
    body.extend(be_opt(0, b""));
    be_block(0x0A0D_0D0A, &body)
}

fn be_idb(tsresol: Option<u8>, tsoffset: i64) -> Vec<u8> {
    let mut body = vec![0, 1, 0, 0, 0, 0, 0xFF, 0xFF];
    if let Some(r) = tsresol {
        body.extend(be_opt(9, &[r]));
    }
    body.extend(be_opt(14, &tsoffset.to_be_bytes()));
    body.extend(be_opt(0, b""));
    be_block(1, &body)
}

fn be_epb(iface: u32, ts: u64, data: &[u8], flags: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for x in [
        iface,
        (ts >> 32) as u32,
        ts as u32,
        data.len() as u32,
        data.len() as u32,
    ] {
        body.extend_from_slice(&x.to_be_bytes());
    }
    body.extend_from_slice(data);
    body.resize(body.len().div_ceil(4) * 4, 0);
    body.extend(be_opt(2, &flags.to_be_bytes()));
    be_block(6, &body)
}

#[test]
fn big_endian_sections_timestamp_resolutions_and_other_blocks() {
    let mut f = be_shb();
    f.extend(be_idb(None, 0)); // microseconds by default
    f.extend(be_idb(Some(0x80 | 20), 0)); // 2^-20 s
    f.extend(be_idb(Some(3), 100)); // milliseconds, +100 s
    f.extend(be_idb(Some(12), 0)); // picoseconds
    f.extend(be_epb(0, 1_500_000, b"abc", 1));
    f.extend(be_epb(1, 3 << 20, b"", 2));
    f.extend(be_epb(2, 2_500, b"x", 3));
    f.extend(be_epb(3, 7_000_000_999, b"", 0));
    f.extend(be_block(3, &[0, 0, 0, 1, 9, 0, 0, 0])); // Simple Packet Block
                                                      // A second, little-endian section restarts interface ids.
    let mut w = Writer::new_with_app(Vec::new(), "", "").unwrap();
    w.add_interface("lo", "", LINKTYPE_RAW, 0).unwrap();
    f.extend(w.into_inner());
    f.extend(be_epb(0, 1, b"", 0)); // big-endian block in a little-endian section: corrupt

    let (blocks, end) = read_all(&f);
    let ts: Vec<(u64, Option<Direction>)> = blocks
        .iter()
        .filter_map(|b| match b {
            Block::Packet {
                ts_ns, direction, ..
            } => Some((*ts_ns, *direction)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ts,
        vec![
            (1_500_000_000, Some(Direction::Inbound)),
            (3_000_000_000, Some(Direction::Outbound)),
            (102_500_000_000, None),
            (7_000_000, None),
        ]
    );
    assert_eq!(
        blocks[0],
        Block::Section {
            comment: None,
            app: Some("other tool".into())
        }
    );
    assert!(matches!(
        blocks[1],
        Block::Interface {
            tsresol: 6,
            linktype: 1,
            snaplen: 65535,
            ..
        }
    ));
    assert_eq!(blocks[9], Block::Other { block_type: 3 });
    assert!(matches!(blocks[11], Block::Interface { id: 0, .. }));
    assert_eq!(blocks.len(), 12);
    let e = end.unwrap_err();
    assert!(!e.is_truncation());
    assert!(
        matches!(
            e,
            PcapngError::TooLarge { .. } | PcapngError::UnalignedLength { .. }
        ),
        "{e}"
    );
}

//! Round trip, truncation, malformed input and foreign-writer (big-endian, other tsresol)
//! tests for the pcapng reader and writer. No privileges needed.

use super::*;

const TS: u64 = 1_795_532_854_120_511_000;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Reads every block; returns them and how reading ended.
fn read_all(bytes: &[u8]) -> (Vec<Block>, Result<(), PcapngError>) {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    loop {
        match r.next_block() {
            Ok(Some(b)) => out.push(b),
            Ok(None) => return (out, Ok(())),
            Err(e) => {
                assert!(
                    matches!(r.next_block(), Ok(None)),
                    "reader not fused after {e}"
                );
                return (out, Err(e));
            }
        }
    }
}

struct Sample {
    bytes: Vec<u8>,
    expected: Vec<Block>,
    /// Offsets where each block ends.
    ends: Vec<usize>,
}

fn sample() -> Sample {
    let comment = "flowtrace --container ens_monitor_cron\nhost: ecs-01\n→ line 3 ✗";
    let mut w = Writer::new_with_app(Vec::new(), comment, "flowtrace 9.9.9").unwrap();
    let mut ends = vec![w.bytes_written() as usize];
    let mut expected = vec![Block::Section {
        comment: Some(comment.into()),
        app: Some("flowtrace 9.9.9".into()),
    }];
    let ifaces = [
        (
            "veth9780200 tc-ingress",
            "container side",
            LINKTYPE_ETHERNET,
            262_144,
        ),
        ("FORWARD/filter", "netfilter", LINKTYPE_RAW, 0),
        ("eth0 tc-egress", "", LINKTYPE_ETHERNET, 65_535),
    ];
    for (i, (name, desc, lt, snap)) in ifaces.iter().enumerate() {
        assert_eq!(w.add_interface(name, desc, *lt, *snap).unwrap(), i as u32);
        ends.push(w.bytes_written() as usize);
        expected.push(Block::Interface {
            id: i as u32,
            name: Some(name.to_string()),
            description: (!desc.is_empty()).then(|| desc.to_string()),
            linktype: *lt,
            snaplen: *snap,
            tsresol: 9,
        });
    }
    let dirs = [Some(Direction::Inbound), Some(Direction::Outbound), None];
    let comments = [
        s(&[]),
        s(&["SNAT 172.18.0.2 → 10.104.68.181"]),
        s(&["DROP ✗", "rule: -A DOCKER-USER -j DROP"]),
    ];
    for (k, len) in [1usize, 3, 54, 1500, 0, 4].into_iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + k) as u8).collect();
        let ts_ns = TS + k as u64 * 1_000_001;
        let orig_len = len as u32 + (k as u32 % 2) * 10;
        let p = PacketRecord {
            interface: (k % 3) as u32,
            ts_ns,
            data: &data,
            orig_len,
            direction: dirs[k % 3],
            comments: &comments[k % 3]
                .iter()
                .map(|c| c.as_bytes())
                .collect::<Vec<_>>(),
        };
        w.packet(&p).unwrap();
        ends.push(w.bytes_written() as usize);
        expected.push(Block::Packet {
            interface: (k % 3) as u32,
            ts_ns,
            data,
            orig_len,
            direction: dirs[k % 3],
            comments: comments[k % 3].clone(),
        });
    }
    w.flush().unwrap();
    let bytes = w.into_inner();
    assert_eq!(*ends.last().unwrap(), bytes.len());
    Sample {
        bytes,
        expected,
        ends,
    }
}

#[test]
fn round_trip_every_field() {
    let sm = sample();
    assert_eq!(sm.bytes.len() % 4, 0);
    let (blocks, end) = read_all(&sm.bytes);
    end.unwrap();
    assert_eq!(blocks, sm.expected);
}

#[test]
fn default_app_names_the_version() {
    let w = Writer::new(Vec::new(), "c").unwrap();
    let (blocks, end) = read_all(&w.into_inner());
    end.unwrap();
    let want = format!("flowtrace {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        blocks,
        vec![Block::Section {
            comment: Some("c".into()),
            app: Some(want)
        }]
    );
}

#[test]
fn every_prefix_yields_complete_blocks_then_end_or_truncation() {
    let sm = sample();
    for cut in 0..=sm.bytes.len() {
        let (blocks, end) = read_all(&sm.bytes[..cut]);
        let complete = sm.ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(blocks, sm.expected[..complete], "prefix {cut}");
        match end {
            Ok(()) => assert!(
                sm.ends.contains(&cut),
                "prefix {cut} ended cleanly mid-block"
            ),
            Err(PcapngError::Empty) => assert_eq!(cut, 0),
            Err(e) => {
                assert!(e.is_truncation(), "prefix {cut}: {e}");
                let PcapngError::Truncated { offset, .. } = e else {
                    unreachable!()
                };
                let start = if complete == 0 {
                    0
                } else {
                    sm.ends[complete - 1]
                };
                assert_eq!(offset, start as u64, "prefix {cut}");
            }
        }
    }
}

#[test]
fn truncation_message_is_clear() {
    let sm = sample();
    let cut = sm.ends[4] + 10;
    let (_, end) = read_all(&sm.bytes[..cut]);
    let msg = end.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("block at byte {}", sm.ends[4])),
        "{msg}"
    );
    assert!(msg.contains("but the file ends after 10 bytes"), "{msg}");
}

#[test]
fn foreign_inputs_get_clear_errors() {
    let (b, e) = read_all(&[]);
    assert!(b.is_empty());
    assert!(matches!(e, Err(PcapngError::Empty)));

    let classic = [
        0xD4, 0xC3, 0xB2, 0xA1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 1, 0, 0, 0,
    ];
    let msg = read_all(&classic).1.unwrap_err().to_string();
    assert!(msg.starts_with("not a pcapng file (first block type 0xD4C3B2A1, expected a Section Header Block 0x0A0D0D0A)"), "{msg}");
    assert!(msg.contains("classic pcap"), "{msg}");

    let mut bad = sample().bytes;
    bad[4..8].copy_from_slice(&0x7000_0000u32.to_le_bytes());
    let e = read_all(&bad).1.unwrap_err();
    assert!(matches!(e, PcapngError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("256 MiB"), "{e}");

    // Just under the cap in a short file: a truncation, and nothing near 256 MiB allocated.
    let mut bad = sample().bytes;
    bad[4..8].copy_from_slice(&(MAX_BLOCK_LEN - 4).to_le_bytes());
    let e = read_all(&bad).1.unwrap_err();
    assert!(e.is_truncation(), "{e}");
    assert!(
        matches!(
            e,
            PcapngError::Truncated {
                claimed: Some(_),
                ..
            }
        ),
        "{e}"
    );

    let mut bad = sample().bytes;
    bad[4..8].copy_from_slice(&30u32.to_le_bytes());
    let e = read_all(&bad).1.unwrap_err().to_string();
    assert_eq!(
        e,
        "block at byte 0 claims length 30, which is not a multiple of 4"
    );
}

#[test]
fn packet_on_missing_interface_and_trailer_mismatch() {
    let sm = sample();
    // Drop the three interface blocks: the first packet then refers to interface 0 of 0.
    let mut b = sm.bytes[..sm.ends[0]].to_vec();
    b.extend_from_slice(&sm.bytes[sm.ends[3]..]);
    let e = read_all(&b).1.unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "packet at byte {} refers to interface 0 but the section has 0",
            sm.ends[0]
        )
    );

    let mut b = sm.bytes.clone();
    let t = sm.ends[1] - 4;
    b[t] ^= 4;
    let e = read_all(&b).1.unwrap_err();
    assert!(matches!(e, PcapngError::TrailerMismatch { .. }), "{e}");
}

/// Deterministic pseudo-random numbers (Knuth's MMIX LCG).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Lcg(42);
    for i in 0..4000 {
        let len = (rng.next() % 300) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 && buf.len() >= 12 {
            // Half start like a pcapng file so the block parsers see the noise.
            buf[..4].copy_from_slice(&[0x0A, 0x0D, 0x0D, 0x0A]);
            buf[8..12].copy_from_slice(&[0x4D, 0x3C, 0x2B, 0x1A]);
        }
        let _ = read_all(&buf);
    }
}

#[test]
fn corrupted_files_never_panic() {
    let base = sample().bytes;
    let mut rng = Lcg(7);
    for _ in 0..6000 {
        let mut b = base.clone();
        let at = (rng.next() as usize) % b.len();
        b[at] = rng.next() as u8;
        if rng.next().is_multiple_of(4) {
            let at2 = (rng.next() as usize) % b.len();
            b[at2] ^= 0x80;
        }
        let _ = read_all(&b);
    }
    // Every byte set to every "interesting" value in turn.
    for at in 0..base.len() {
        for v in [0x00, 0x01, 0x03, 0x7F, 0x80, 0xFC, 0xFF] {
            let mut b = base.clone();
            b[at] = v;
            let _ = read_all(&b);
        }
    }
}

//! Interop with the real tools: tshark (and capinfos when present) must open what the writer
//! produces and see the interface names, comments, addresses, port and exact timestamps.

use std::{path::PathBuf, process::Command};

use super::*;

const TS_TC: u64 = 1_795_532_854_120_511_000;
const TS_NF: u64 = 1_795_532_854_120_543_601;

/// IPv4 header checksum over `h` (checksum field zero).
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 + TCP SYN, no options.
fn ipv4_tcp_syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xFA, 0xF0, 0, 0, 0, 0]);
    ip
}

fn tool(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{name} is not installed (looked for {}); run `cargo xtask setup` to install the \
         test tools",
        p.display()
    );
    p
}

/// stderr lines that are warnings, ignoring tshark's note about running as root.
fn warnings(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Running as user"))
        .map(str::to_string)
        .collect()
}

#[test]
fn tshark_reads_what_we_write() {
    let tshark = tool("tshark");
    let dir = std::env::temp_dir().join(format!("flowtrace-pcapng-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("interop.pcapng");
    write_two_packets(&path);
    tshark_sees_names_comments_addresses_and_times(&tshark, &path);
    tshark_and_capinfos_read_it_without_warnings(&tshark, &path);
    our_reader_agrees(&path);
    std::fs::remove_dir_all(&dir).ok();
}

/// A packet at a veth's tc ingress and one dropped at FORWARD/filter, with comments.
fn write_two_packets(path: &std::path::Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = Writer::new(file, "flowtrace --container ens_monitor_cron\nsecond line").unwrap();
    let veth = w
        .add_interface("veth9780200 tc-ingress", "tc ingress", LINKTYPE_ETHERNET, 0)
        .unwrap();
    let fwd = w
        .add_interface("FORWARD/filter", "netfilter", LINKTYPE_RAW, 0)
        .unwrap();
    let mut frame = vec![
        0x02, 0x42, 0xac, 0x12, 0, 1, 0x02, 0x42, 0xac, 0x12, 0, 2, 0x08, 0,
    ];
    frame.extend(ipv4_tcp_syn(
        [172, 18, 0, 2],
        [198, 51, 100, 2],
        41234,
        8080,
    ));
    let c1 = ["leaves the container → bridge"];
    w.packet(&PacketRecord {
        interface: veth,
        ts_ns: TS_TC,
        data: &frame,
        orig_len: frame.len() as u32,
        direction: Some(Direction::Inbound),
        comments: &[c1[0].as_bytes()],
    })
    .unwrap();
    let raw = ipv4_tcp_syn([172, 18, 0, 2], [198, 51, 100, 2], 52011, 8081);
    let c2 = ["DROP ✗ NETFILTER_DROP", "rule: -A DOCKER-USER -j DROP"];
    w.packet(&PacketRecord {
        interface: fwd,
        ts_ns: TS_NF,
        data: &raw,
        orig_len: raw.len() as u32,
        direction: Some(Direction::Outbound),
        comments: &[c2[0].as_bytes(), c2[1].as_bytes()],
    })
    .unwrap();
    w.flush().unwrap();
    drop(w);
}

fn tshark_sees_names_comments_addresses_and_times(
    tshark: &std::path::Path,
    path: &std::path::Path,
) {
    let out = Command::new(tshark)
        .arg("-r")
        .arg(path)
        .args(["-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "frame.interface_name",
            "-e",
            "frame.comment",
            "-e",
            "ip.src",
        ])
        .args([
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "frame.time_epoch",
        ])
        .args(["-e", "frame.packet_flags_direction"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("tshark printed:\n{stdout}");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        warnings(&out.stderr).is_empty(),
        "tshark warned: {:?}",
        warnings(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, want) in lines.iter().zip([
        [
            "veth9780200 tc-ingress",
            "leaves the container → bridge",
            "172.18.0.2",
            "198.51.100.2",
            "8080",
            "1795532854.120511000",
            "0x00000001",
        ],
        [
            "FORWARD/filter",
            "DROP ✗ NETFILTER_DROP",
            "172.18.0.2",
            "198.51.100.2",
            "8081",
            "1795532854.120543601",
            "0x00000002",
        ],
    ]) {
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert_eq!(fields[0], want[0], "{line}");
        assert!(fields[1].contains(want[1]), "{line}");
        assert_eq!(&fields[2..], &want[2..], "{line}");
    }
    assert!(
        lines[1].contains("rule: -A DOCKER-USER -j DROP"),
        "{}",
        lines[1]
    );
}

fn tshark_and_capinfos_read_it_without_warnings(tshark: &std::path::Path, path: &std::path::Path) {
    // Plain read, no warnings; capinfos when installed.
    let out = Command::new(tshark)
        .arg("-r")
        .arg(path)
        .arg("-q")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        warnings(&out.stderr).is_empty(),
        "tshark -q warned: {:?}",
        warnings(&out.stderr)
    );
    if PathBuf::from("/usr/bin/capinfos").exists() {
        let out = Command::new("/usr/bin/capinfos")
            .arg(path)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&out.stdout);
        eprintln!("capinfos printed:\n{info}");
        assert!(
            out.status.success(),
            "capinfos: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            warnings(&out.stderr).is_empty(),
            "capinfos warned: {:?}",
            warnings(&out.stderr)
        );
        assert!(info.contains("Number of packets:   2"), "{info}");
        assert!(info.contains("nanoseconds"), "{info}");
    }
}

fn our_reader_agrees(path: &std::path::Path) {
    // Our own reader agrees.
    let bytes = std::fs::read(path).unwrap();
    let mut r = Reader::new(&bytes[..]);
    let mut n = 0;
    while let Some(b) = r.next_block().unwrap() {
        if let Block::Packet { ts_ns, .. } = b {
            assert!(ts_ns == TS_TC || ts_ns == TS_NF);
            n += 1;
        }
    }
    assert_eq!(n, 2);
}

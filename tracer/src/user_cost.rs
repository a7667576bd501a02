//! What user space spends on one shown packet, on one core and without a kernel: the records
//! the kernel sends for a forwarded UDP packet (tc at the container's veth, the bridge and the
//! uplink, the netfilter observers a Docker ruleset links where they report it: each hook's
//! entry and the slot after MASQUERADE, the consume) are decoded, joined,
//! explained and printed exactly as `trace` does with the ring buffer's, into a buffer that is
//! thrown away. The live figure (the bench) adds the ring buffer's reading and the write to
//! stdout; this one has no noise from the load or the forwarding, so it can be profiled.
//! With a recording, its `write(2)`s run on the recording's own thread (`output::spool`), as
//! in `trace`, and are not counted: the figure is the ring reader's, the thread that must
//! keep up. `cargo xtask bench-user` runs it (tracer/examples/user_cost.rs).

use std::io::{BufWriter, Write};

use tracer_common::{
    netfilter::{
        slots_at, table_priority, HOOK_FORWARD, HOOK_POSTROUTING, HOOK_PREROUTING, SLOT_PRIORITIES,
    },
    Direction, EventKind, NfEvent, NfRecord, SkbEndEvent, TcHead, NF_HEADERS, SNAP_LEN, TC_HEADERS,
    TC_HEAD_LEN,
};

use crate::{
    correlate::{
        explain::Explainer,
        packet::{PointInfo, Points},
    },
    events::{
        clock::WallClock,
        decode::{decode, record_header, tc_record},
    },
    output::{
        record::{RecordOptions, Recorder},
        Format,
    },
    pipeline::Pipeline,
    select::PacketFilter,
    target::{ruleset::Ruleset, topology::Role},
};

/// How the shown packets are printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Text,
    /// Text, and every hop recorded into this pcapng file (as `--write` does).
    Pcapng(std::path::PathBuf),
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// Packets whose records went in, and packets shown.
    pub packets: u64,
    pub shown: u64,
    /// Records decoded (about eleven per packet).
    pub records: u64,
    /// This thread's CPU time over the run, and the bytes printed.
    pub cpu_ns: u64,
    pub bytes_out: u64,
}

impl Cost {
    pub fn ns_per_packet(&self) -> f64 {
        self.cpu_ns as f64 / self.shown.max(1) as f64
    }
}

const VETH: u32 = 21;
const BRIDGE: u32 = 10;
const UPLINK: u32 = 30;
const CONTAINER: [u8; 4] = [172, 18, 0, 2];
const UPLINK_IP: [u8; 4] = [198, 51, 100, 1];
const SERVER: [u8; 4] = [198, 51, 100, 2];
/// Distinct flows the packets cycle through (as `iperf3 -P` or a client's source ports would).
const FLOWS: u16 = 64;
/// Records handed over at once, as the ring buffer's reader does under load.
const BATCH: usize = 512;

/// Docker's rules for one bridge network with a MASQUERADE'd subnet (Debian's Docker 20.10).
const DOCKER_RULESET: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
[0:0] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
[0:0] -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
[0:0] -A POSTROUTING -s 172.18.0.0/16 ! -o br-d9231d44a1ab -j MASQUERADE
[0:0] -A DOCKER -i br-d9231d44a1ab -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
[0:0] -A FORWARD -j DOCKER-USER
[0:0] -A FORWARD -j DOCKER-ISOLATION-STAGE-1
[0:0] -A FORWARD -o br-d9231d44a1ab -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[0:0] -A FORWARD -o br-d9231d44a1ab -j DOCKER
[0:0] -A FORWARD -i br-d9231d44a1ab ! -o br-d9231d44a1ab -j ACCEPT
[0:0] -A FORWARD -i br-d9231d44a1ab -o br-d9231d44a1ab -j ACCEPT
[0:0] -A DOCKER-ISOLATION-STAGE-1 -i br-d9231d44a1ab ! -o br-d9231d44a1ab -j DOCKER-ISOLATION-STAGE-2
[0:0] -A DOCKER-ISOLATION-STAGE-1 -j RETURN
[0:0] -A DOCKER-ISOLATION-STAGE-2 -o br-d9231d44a1ab -j DROP
[0:0] -A DOCKER-ISOLATION-STAGE-2 -j RETURN
[0:0] -A DOCKER-USER -j RETURN
COMMIT
";

/// Decodes, joins, explains and prints `packets` forwarded UDP packets (64-byte payloads,
/// MASQUERADE'd at the uplink) and measures this thread's CPU time doing it.
pub fn measure(packets: u64, output: Output) -> std::io::Result<Cost> {
    let mut pipeline = pipeline(&output);
    if let Output::Pcapng(path) = &output {
        let opts = RecordOptions {
            path: path.clone(),
            rotate: None,
            max_files: None,
            snaplen: 0,
            wall_offset_ns: WALL_OFFSET_NS,
        };
        let section = "flowtrace user-space cost: synthetic records".to_owned();
        pipeline.add_sink(Box::new(Recorder::create(opts, section)?));
        // As `--write FILE --no-tui` runs: recorded, not printed.
        pipeline.record_only();
    }
    // Without a recording the kernel sends IPv4 packets' headers alone, as `trace` loads it.
    let mut records = Records::new(!matches!(output, Output::Pcapng(_)));
    let mut out = Counted(0);
    let mut buf = BufWriter::with_capacity(64 * 1024, &mut out);
    let mut batch = Vec::with_capacity(BATCH);
    let mut cost = Cost {
        packets,
        ..Cost::default()
    };
    let start = thread_cpu_ns();
    for n in 0..packets {
        for record in records.packet(n) {
            // Malformed records cannot happen here: they are built by this module.
            if let Ok(obs) = decode(record) {
                batch.push(obs);
            }
            cost.records += 1;
        }
        if batch.len() >= BATCH {
            batch.drain(..).for_each(|o| pipeline.observe(o));
            pipeline.flush_ready(&mut buf)?;
        }
    }
    batch.drain(..).for_each(|o| pipeline.observe(o));
    let summary = pipeline.finish(&mut buf)?;
    buf.flush()?;
    drop(buf);
    cost.cpu_ns = thread_cpu_ns().saturating_sub(start);
    cost.shown = summary.packets;
    cost.bytes_out = out.0;
    Ok(cost)
}

/// Bytes written, and nothing kept.
struct Counted(u64);

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on this stack frame.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock minus monotonic time for the synthetic records: early December 2025.
const WALL_OFFSET_NS: i128 = 1_764_900_000_000_000_000;

fn pipeline(output: &Output) -> Pipeline {
    let point = |name: &str, role, container: Option<&str>| PointInfo {
        name: name.into(),
        role,
        container: container.map(Into::into),
        veth: role == Role::Veth,
    };
    let points: Points = FromIterator::from_iter([
        (
            VETH,
            point("veth9780200", Role::Veth, Some("ens_monitor_cron")),
        ),
        (BRIDGE, point("br-d9231d44a1ab", Role::Bridge, None)),
        (UPLINK, point("eth0", Role::Uplink, None)),
    ]);
    let mut explainer = Explainer::empty();
    explainer.set_ruleset(Ruleset::parse(DOCKER_RULESET, "iptables-save"));
    let format = match output {
        Output::Json => Format::Json,
        Output::Text | Output::Pcapng(_) => Format::Text,
    };
    Pipeline::new(
        points,
        explainer,
        PacketFilter::default(),
        format,
        false,
        WallClock::with_offset(WALL_OFFSET_NS),
    )
}

/// One packet's records, rewritten in place for each packet (its time, skb address, IP id and
/// source port), as the ring buffer would hand them over.
struct Records {
    tc: [Vec<u8>; 3],
    nf: Vec<Vec<u8>>,
    end: Vec<u8>,
}

impl Records {
    /// `headers_only`: the records the kernel sends when nothing records the bytes
    /// (`TcHeaders`, `NfHeaders`).
    fn new(headers_only: bool) -> Self {
        let inner = udp_frame(CONTAINER);
        let outer = udp_frame(UPLINK_IP);
        let tc = |frame: &[u8], ifindex, dir| {
            if !headers_only {
                return tc_record(frame, 0, ifindex, dir);
            }
            let mut r = tc_record(&frame[..TC_HEADERS], 0, ifindex, dir);
            let len = std::mem::offset_of!(TcHead, len);
            r[len..len + 4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            r
        };
        let tc = [
            tc(&inner, VETH, Direction::Ingress),
            tc(&inner, BRIDGE, Direction::Ingress),
            tc(&outer, UPLINK, Direction::Egress),
        ];
        let mut nf = Vec::new();
        for (hook, tables) in [
            (HOOK_PREROUTING, &["nat"][..]),
            (HOOK_FORWARD, &["filter"]),
            (HOOK_POSTROUTING, &["nat"]),
        ] {
            let prios: Vec<i32> = tables
                .iter()
                .filter_map(|t| table_priority(t, hook))
                .collect();
            let mask = slots_at(hook, &prios);
            let mut reported: Option<&[u8]> = None;
            for slot in 0..SLOT_PRIORITIES.len() as u8 {
                if mask & (1 << slot) == 0 {
                    continue;
                }
                // After POSTROUTING's nat the source is the uplink's.
                let after_snat = hook == HOOK_POSTROUTING && SLOT_PRIORITIES[slot as usize] > 100;
                let frame = if after_snat { &outer } else { &inner };
                // A hook's later slots report only a changed packet.
                if reported != Some(&frame[..]) {
                    nf.push(if headers_only {
                        nf_record::<NF_HEADERS>(&frame[14..], hook, slot)
                    } else {
                        nf_record::<SNAP_LEN>(&frame[14..], hook, slot)
                    });
                    reported = Some(frame);
                }
            }
        }
        Self {
            tc,
            nf,
            end: end_record(),
        }
    }

    /// The records of packet `n` in the order the kernel sends them.
    fn packet(&mut self, n: u64) -> impl Iterator<Item = &[u8]> {
        let ts = 1_000_000_000 + n * 20_000;
        // Slab addresses come back: a few hundred sk_buffs in turn.
        let skb = 0xffff_8880_0000_0000 + (n % 512) * 0x100;
        let sport = 40_000 + (n % u64::from(FLOWS)) as u16;
        let id = (n as u16).to_be_bytes();
        let [veth, bridge, uplink] = &mut self.tc;
        let mut t = ts;
        let mut stamp = |r: &mut Vec<u8>, ip_at: Option<usize>| {
            t += 700;
            r[8..16].copy_from_slice(&t.to_ne_bytes());
            r[16..24].copy_from_slice(&skb.to_ne_bytes());
            if let Some(ip) = ip_at {
                r[ip + 4..ip + 6].copy_from_slice(&id);
                r[ip + 20..ip + 22].copy_from_slice(&sport.to_be_bytes());
            }
        };
        let eth = TC_HEAD_LEN + 14;
        let nf_ip = std::mem::offset_of!(NfEvent, data);
        stamp(veth, Some(eth));
        stamp(bridge, Some(eth));
        self.nf.iter_mut().for_each(|r| stamp(r, Some(nf_ip)));
        stamp(uplink, Some(eth));
        stamp(&mut self.end, None);
        [&*veth, &*bridge]
            .into_iter()
            .chain(self.nf.iter())
            .chain([&*uplink, &self.end])
            .map(Vec::as_slice)
    }
}

/// An Ethernet frame with an IPv4 UDP datagram of 64 bytes' payload from `src`.
fn udp_frame(src: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 64];
    f[0..6].copy_from_slice(&[0x02, 0x42, 0xac, 0x12, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0x42, 0xac, 0x12, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 8 + 64).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&SERVER);
    let udp = &mut f[34..42];
    udp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(8u16 + 64).to_be_bytes());
    f
}

/// The bytes of a `repr(C)` record, as the ring buffer holds them.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is one of tracer-common's repr(C) plain-old-data records; reading its bytes
    // (padding included, zeroed by the constructors above) is what the kernel side sends.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn nf_record<const N: usize>(ip: &[u8], hook: u8, slot: u8) -> Vec<u8> {
    let mut data = [0u8; N];
    let n = ip.len().min(N);
    data[..n].copy_from_slice(&ip[..n]);
    bytes_of(&NfRecord::<N> {
        header: record_header(EventKind::Nf, 1, 0, 0),
        hook,
        pf: 2,
        slot,
        _pad: 0,
        in_ifindex: BRIDGE,
        out_ifindex: if hook == HOOK_PREROUTING { 0 } else { UPLINK },
        len: ip.len() as u32,
        cap_len: n as u32,
        mark: 0,
        data,
    })
}

fn end_record() -> Vec<u8> {
    bytes_of(&SkbEndEvent {
        header: record_header(EventKind::Consume, 1, 0, 0),
        location: 0,
        reason: 0,
        ifindex: 0,
        netns: 0,
        nf_hook: 0,
        nf_slot: 0,
        passed: 0,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packet is joined from all its records and shown with its whole path and NAT.
    #[test]
    fn every_packet_is_shown_whole() {
        let cost = measure(1000, Output::Json).expect("measured");
        assert_eq!(cost.shown, 1000);
        // Three tc, four netfilter (each hook's entry, the slot after MASQUERADE), the free.
        assert_eq!(cost.records, 1000 * 8);
        let shown = |headers_only: bool| {
            let mut p = pipeline(&Output::Json);
            let mut records = Records::new(headers_only);
            let mut out = Vec::new();
            for r in records.packet(7) {
                p.observe(decode(r).expect("decoded"));
            }
            p.finish(&mut out).expect("written");
            String::from_utf8(out).expect("utf8")
        };
        let text = shown(true);
        // The headers alone show what the whole records show.
        assert_eq!(text, shown(false));
        let line = text.lines().next().expect("a line");
        let Ok(crate::model::Line::Packet(packet)) = crate::model::Line::parse(line) else {
            panic!("not a packet: {text}")
        };
        // Three tc hops and the three tables that worked on it (PREROUTING nat, FORWARD
        // filter, POSTROUTING nat), from four netfilter observations.
        assert_eq!(packet.hops.len(), 6, "{line}");
        assert!(
            line.contains(r#""kind":"snat","from":"172.18.0.2:40007","to":"198.51.100.1:40007""#),
            "{line}"
        );
    }
}

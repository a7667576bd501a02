//! `--write FILE.pcapng`: every hop of every traced packet as an Enhanced Packet Block on an
//! interface named after the observation point (`veth9780200 tc-ingress`, `FORWARD/filter`).
//! tc hops carry the Ethernet frame, netfilter hops the IP packet (LINKTYPE_RAW). Each block
//! has two comments: a line for people (Wireshark's `frame.comment`) and a `flowtrace:` JSON
//! line from which `flowtrace read` rebuilds exactly what the live run printed.
//! Files are created mode 0600 (packet contents are sensitive); with `--rotate` a new file is
//! started past a size, and `--max-files` keeps only the newest ones.

use std::{
    collections::VecDeque,
    io,
    path::{Path, PathBuf},
};

use super::{merged, spool::Spool, Step};
use crate::{
    correlate::{explain::Explained, NetMap},
    model::{Hop, Lost, Packet},
    pcapng::{Direction, PacketRecord, Writer, LINKTYPE_ETHERNET, LINKTYPE_RAW},
};

/// The prefix of the machine-readable comment.
pub const TAG: &str = "flowtrace:";

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub path: PathBuf,
    /// Start a new file once the current one is this large.
    pub rotate: Option<u64>,
    /// Keep at most this many files (oldest deleted).
    pub max_files: Option<usize>,
    /// Bytes kept of each hop (0: everything captured).
    pub snaplen: u32,
    /// Wall-clock minus monotonic time (`WallClock::offset_ns`): blocks carry wall-clock
    /// timestamps, as tshark and Wireshark expect, though the kernel's are monotonic.
    pub wall_offset_ns: i128,
}

pub struct Recorder {
    opts: RecordOptions,
    section: String,
    writer: Writer<Spool>,
    /// Interface ids by name: tc points (Ethernet) and netfilter points (raw IP).
    ifaces: [NetMap<String, u32>; 2],
    /// The interface (name, link type, id) of each hop of the last packet, by hop number: the
    /// packets of a flood follow one path, and a comparison with the name there spares the
    /// hashing of every hop's name (perf: a tenth of recording's time a packet).
    last_path: Vec<(String, u16, u32)>,
    files: VecDeque<PathBuf>,
    /// Number of the current file (0: the path as given).
    file_no: u64,
    next_pkt: u64,
    pub packets: u64,
    /// Each hop's two comments (for people, and the `flowtrace:` JSON), written into the same
    /// two buffers for every hop.
    people: String,
    tagged: Vec<u8>,
}

fn open(path: &Path, section: &str) -> io::Result<Writer<Spool>> {
    let file = super::files::create_private(path)?;
    let app = concat!("flowtrace ", env!("CARGO_PKG_VERSION"));
    Writer::new_with_app(Spool::new(file)?, section, app)
}

/// `trace.pcapng` → `trace-3.pcapng`.
fn numbered(base: &Path, n: u64) -> PathBuf {
    if n == 0 {
        return base.to_owned();
    }
    let stem = base.file_stem().and_then(|s| s.to_str()).unwrap_or("trace");
    let name = match base.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{n}.{ext}"),
        None => format!("{stem}-{n}"),
    };
    base.with_file_name(name)
}

impl Recorder {
    /// Creates the file; `section` (container metadata) becomes the section header's comment.
    pub fn create(opts: RecordOptions, section: String) -> io::Result<Self> {
        let writer = open(&opts.path, &section)?;
        let mut files = VecDeque::new();
        files.push_back(opts.path.clone());
        Ok(Self {
            opts,
            section,
            writer,
            ifaces: [NetMap::default(), NetMap::default()],
            last_path: Vec::new(),
            files,
            file_no: 0,
            next_pkt: 0,
            packets: 0,
            people: String::with_capacity(256),
            tagged: Vec::with_capacity(1024),
        })
    }

    /// A monotonic timestamp as wall-clock nanoseconds since the epoch.
    fn wall(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.opts.wall_offset_ns).unwrap_or(mono_ns)
    }

    pub fn path(&self) -> &Path {
        self.files.back().map_or(&self.opts.path, |p| p.as_path())
    }

    pub fn bytes_written(&self) -> u64 {
        self.writer.bytes_written()
    }

    /// Returns once everything recorded so far is in the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().sync()
    }

    /// The interface of hop `i`: the last packet's at that hop if it is the same.
    fn interface_at(&mut self, i: usize, name: &str, linktype: u16) -> io::Result<u32> {
        if let Some((n, l, id)) = self.last_path.get(i) {
            if *l == linktype && n == name {
                return Ok(*id);
            }
        }
        let id = self.interface(name, linktype)?;
        let known = self.last_path.len();
        match self.last_path.get_mut(i) {
            Some(k) => {
                k.0.clear();
                k.0.push_str(name);
                (k.1, k.2) = (linktype, id);
            }
            None if i == known => self.last_path.push((name.to_owned(), linktype, id)),
            None => {}
        }
        Ok(id)
    }

    fn interface(&mut self, name: &str, linktype: u16) -> io::Result<u32> {
        let kind = usize::from(linktype == LINKTYPE_RAW);
        if let Some(id) = self.ifaces[kind].get(name) {
            return Ok(*id);
        }
        let description = if linktype == LINKTYPE_RAW {
            "flowtrace netfilter observation (hook/table), IP packet"
        } else {
            "flowtrace tc observation, Ethernet frame"
        };
        let id = self.writer.add_interface(name, description, linktype, 0)?;
        self.ifaces[kind].insert(name.to_owned(), id);
        Ok(id)
    }

    fn rotate_if_needed(&mut self) -> io::Result<()> {
        let Some(limit) = self.opts.rotate else {
            return Ok(());
        };
        if self.writer.bytes_written() < limit {
            return Ok(());
        }
        self.flush()?;
        self.file_no += 1;
        let next = numbered(&self.opts.path, self.file_no);
        self.writer = open(&next, &self.section)?;
        self.ifaces.iter_mut().for_each(NetMap::clear);
        self.last_path.clear();
        self.files.push_back(next);
        if let Some(max) = self.opts.max_files {
            while self.files.len() > max.max(1) {
                if let Some(old) = self.files.pop_front() {
                    let _ = std::fs::remove_file(old);
                }
            }
        }
        Ok(())
    }

    /// Writes every hop of one packet, `p` (built from `e`).
    pub fn record(&mut self, e: &Explained, p: &Packet) -> io::Result<()> {
        self.rotate_if_needed()?;
        let pkt = self.next_pkt;
        self.next_pkt += 1;
        self.packets += 1;
        let steps = merged(e);
        let n = steps.len();
        // The packet without its hops (each hop's own record carries it), serialised once.
        let mut head = Vec::with_capacity(512);
        p.write_json_head(&mut head)?;
        let mut name = String::with_capacity(48);
        for (i, (step, hop)) in steps.iter().zip(p.hops.iter()).enumerate() {
            name.clear();
            let (linktype, ts, data, orig, dir) = match (step, hop) {
                (Step::Tc(h, _), _) => {
                    name.push_str(match hop {
                        Hop::Tc(t) => &t.iface,
                        Hop::Nf(_) => "?",
                    });
                    name.push_str(" tc-");
                    name.push_str(h.direction.as_str());
                    let dir = if h.direction == tracer_common::Direction::Ingress {
                        Direction::Inbound
                    } else {
                        Direction::Outbound
                    };
                    (
                        LINKTYPE_ETHERNET,
                        h.ts_ns,
                        h.bytes.as_slice(),
                        h.len,
                        Some(dir),
                    )
                }
                (Step::Nf(s), hop) => {
                    match hop {
                        Hop::Nf(h) => [&*h.hook, "/", &*h.table]
                            .into_iter()
                            .for_each(|x| name.push_str(x)),
                        Hop::Tc(_) => name.push_str("?/?"),
                    }
                    let data = s.bytes(&e.packet);
                    (LINKTYPE_RAW, s.ts_ns, data, data.len() as u32, None)
                }
            };
            let iface = self.interface_at(i, &name, linktype)?;
            let keep = match self.opts.snaplen {
                0 => data.len(),
                n => data.len().min(n as usize),
            };
            human(&mut self.people, pkt, i, n, p, hop);
            machine(&mut self.tagged, pkt, i, n, hop, &head)?;
            self.writer.packet(&PacketRecord {
                interface: iface,
                ts_ns: self.wall(ts),
                data: &data[..keep],
                orig_len: orig.max(keep as u32),
                direction: dir,
                comments: &[self.people.as_bytes(), &self.tagged],
            })?;
        }
        Ok(())
    }
}

/// `flowtrace:{"pkt","hop","hops","data"[,"packet" on the first hop]}` into `b`, written
/// without building (and cloning into) a JSON tree per hop. UTF-8 (JSON as serde_json writes
/// it, from the model's strings), so it is not checked again: that check of every hop's
/// comment was a thirtieth of recording's instructions (callgrind, bench-user).
fn machine(
    b: &mut Vec<u8>,
    pkt: u64,
    i: usize,
    n: usize,
    hop: &Hop,
    head: &[u8],
) -> io::Result<()> {
    b.clear();
    b.extend_from_slice(TAG.as_bytes());
    for (key, v) in [
        ("{\"pkt\":", pkt),
        (",\"hop\":", i as u64),
        (",\"hops\":", n as u64),
    ] {
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
    b.extend_from_slice(b",\"data\":");
    hop.write_json(b)?;
    if i == 0 {
        b.extend_from_slice(b",\"packet\":");
        b.extend_from_slice(head);
    }
    b.push(b'}');
    debug_assert!(std::str::from_utf8(b).is_ok(), "a comment is UTF-8");
    Ok(())
}

/// `--write`: every shown packet, hop by hop, into the recording.
impl crate::sink::Sink for Recorder {
    fn packet(&mut self, e: &Explained, p: &Packet, _: &mut dyn io::Write) -> io::Result<()> {
        self.record(e, p)
    }

    fn lost(&mut self, now_ns: u64, count: u64, _: &mut dyn io::Write) -> io::Result<()> {
        Recorder::lost(self, now_ns, count)
    }

    /// Each tick: hands what is gathered to the writing thread, without waiting for the disk.
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        Recorder::flush(self)
    }

    fn recording(&self) -> Option<(String, u64)> {
        Some((self.path().display().to_string(), self.bytes_written()))
    }
}

impl Recorder {
    /// Records that `count` events were lost (an empty block on the `flowtrace` interface, with
    /// a comment), so that a recording says where it has gaps.
    pub fn lost(&mut self, ts_ns: u64, count: u64) -> io::Result<()> {
        let iface = self.interface("flowtrace events", LINKTYPE_RAW)?;
        let machine = Lost::of(count).to_json();
        let people = format!(
            "{count} events lost (ring buffer full); per-hop counters still count every packet"
        );
        let tagged = format!("{TAG}{machine}");
        self.writer.packet(&PacketRecord {
            interface: iface,
            ts_ns: self.wall(ts_ns),
            data: &[],
            orig_len: 0,
            direction: None,
            comments: &[people.as_bytes(), tagged.as_bytes()],
        })?;
        self.writer.flush()
    }
}

/// `pkt 3 hop 4/6: FORWARD filter DROP NETFILTER_DROP rule: -A DOCKER-USER …`, into `t`.
fn human(t: &mut String, pkt: u64, i: usize, n: usize, p: &Packet, hop: &Hop) {
    // Pieces pushed onto one String: format! per piece was a fifth of recording's cost.
    t.clear();
    let push = |t: &mut String, parts: &[&str]| parts.iter().for_each(|x| t.push_str(x));
    let mut digits = [
        itoa::Buffer::new(),
        itoa::Buffer::new(),
        itoa::Buffer::new(),
    ];
    let [a, b, c] = &mut digits;
    let last = i + 1 == n;
    push(
        t,
        &[
            "pkt ",
            a.format(pkt),
            " hop ",
            b.format(i + 1),
            "/",
            c.format(n),
            ": ",
        ],
    );
    match hop {
        Hop::Nf(h) => {
            push(t, &[&h.hook, " ", &h.table, " ", &h.verdict]);
            if let (Some(d), "drop") = (&p.drop, &*h.verdict) {
                push(t, &[" ", &d.reason]);
                if let Some(rule) = &d.rule {
                    push(t, &[" rule: ", rule]);
                }
            } else if let Some(rule) = &h.rule {
                push(t, &[" rule: ", rule]);
            } else if let (Some(policy), Some(chain)) = (&h.policy, h.chain_path.first()) {
                push(t, &[" policy: ", policy, " (", chain, ")"]);
            }
        }
        Hop::Tc(h) => {
            let (src, dst) = (h.src.as_deref(), h.dst.as_deref());
            push(t, &[&h.iface, " tc ", &h.dir, " ", src.unwrap_or("")]);
            push(t, &[" → ", dst.unwrap_or("")]);
        }
    }
    if let Some(nat) = hop.nat() {
        push(t, &[" ", &nat.text()]);
    }
    if let Some(d) = p.drop.as_ref().filter(|d| last && d.hook.is_none()) {
        push(t, &[" ✗ dropped: ", &d.reason]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::files::create_private as open_new;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ft-rec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// `--write` onto a link: refused with one sentence, the link's target untouched.
    #[test]
    fn a_symlink_is_never_written_through() {
        let dir = scratch("link");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let link = dir.join("x.pcapng");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        let e = open_new(&link).expect_err("a link is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An existing file is replaced, not truncated in place: another name for the old file
    /// keeps its contents, and the new file is mode 0600 whatever the old one's mode was.
    #[test]
    fn an_existing_file_is_replaced_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("replace");
        let path = dir.join("x.pcapng");
        std::fs::write(&path, b"old").expect("old");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let other_name = dir.join("hardlink");
        std::fs::hard_link(&path, &other_name).expect("hard link");
        drop(open_new(&path).expect("replaced"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&other_name).expect("read"), b"old");
        assert!(std::fs::read(&path).expect("read").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A hop's interface is the last packet's at that hop only if its name and link type are
    /// the same; any other gets its own, and one seen before gets its id again.
    #[test]
    fn each_hop_gets_the_interface_of_its_name() {
        let dir = scratch("ifaces");
        let opts = RecordOptions {
            path: dir.join("i.pcapng"),
            rotate: None,
            max_files: None,
            snaplen: 0,
            wall_offset_ns: 0,
        };
        let mut r = Recorder::create(opts, String::new()).expect("recorder");
        let mut at = |i, name, link| r.interface_at(i, name, link).expect("interface");
        let a = at(0, "a tc-ingress", LINKTYPE_ETHERNET);
        let fwd = at(1, "FORWARD/filter", LINKTYPE_RAW);
        assert_eq!(at(0, "a tc-ingress", LINKTYPE_ETHERNET), a);
        let b = at(0, "b tc-ingress", LINKTYPE_ETHERNET);
        assert_ne!(a, b);
        assert_eq!(at(1, "FORWARD/filter", LINKTYPE_RAW), fwd);
        // The same name as raw IP is another interface; a hop past the last path too.
        let raw_a = at(0, "a tc-ingress", LINKTYPE_RAW);
        assert!(![a, b, fwd].contains(&raw_a));
        assert_eq!(at(0, "a tc-ingress", LINKTYPE_ETHERNET), a);
        assert_eq!(at(7, "b tc-ingress", LINKTYPE_ETHERNET), b);
        assert_eq!(at(1, "a tc-ingress", LINKTYPE_ETHERNET), a);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A rotated name planted in advance as a link makes the rotation fail, never follow it.
    #[test]
    fn a_planted_rotated_name_is_not_followed() {
        let dir = scratch("rotate");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join("trace-1.pcapng")).expect("symlink");
        let mut r = Recorder::create(
            RecordOptions {
                path: dir.join("trace.pcapng"),
                rotate: Some(1),
                max_files: None,
                snaplen: 0,
                wall_offset_ns: 0,
            },
            "test".into(),
        )
        .expect("create");
        assert!(r.rotate_if_needed().is_err());
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The human comment of a netfilter hop names its rule or policy as nftrace did.
    #[test]
    fn hop_comments_name_the_deciding_rule_or_policy() {
        let p = crate::tui::fixtures::dropped();
        let comments: Vec<String> = p
            .hops
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut t = String::new();
                human(&mut t, 1, i, p.hops.len(), &p, h);
                t
            })
            .collect();
        assert_eq!(
            comments[1],
            "pkt 1 hop 2/4: PREROUTING nat accept policy: accept (PREROUTING)"
        );
        assert_eq!(
            comments[3],
            format!(
                "pkt 1 hop 4/4: FORWARD filter drop NETFILTER_DROP rule: {}",
                crate::tui::fixtures::RULE
            )
        );
    }

    /// The head a recording's first hop carries reads back as the packet without its hops.
    #[test]
    fn the_head_is_the_packet_without_its_hops() {
        let p = crate::tui::fixtures::dropped();
        let mut head = Vec::new();
        p.write_json_head(&mut head).expect("written");
        let back: Packet = serde_json::from_slice(&head).expect("a packet");
        assert!(back.hops.is_empty());
        assert_eq!(
            Packet {
                hops: p.hops.clone(),
                ..back
            },
            p
        );
        assert!(!String::from_utf8_lossy(&head).contains("\"hops\""));
    }

    #[test]
    fn rotated_files_are_numbered() {
        let base = Path::new("/tmp/x/trace.pcapng");
        assert_eq!(numbered(base, 0), base);
        assert_eq!(numbered(base, 3), Path::new("/tmp/x/trace-3.pcapng"));
        assert_eq!(numbered(Path::new("rec"), 2), Path::new("rec-2"));
    }
}

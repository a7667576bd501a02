//! `flowtrace read FILE.pcapng`: prints a recording exactly as the live run printed it, from
//! the file alone. Each hop's block carries a `flowtrace:` JSON comment; the hops of one packet
//! are joined back into the packet's JSON and rendered by the same code as a live run.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::Path,
};

use serde::Deserialize;

use crate::{
    cli::ReadArgs,
    correlate::flow::{FlowTable, Sample},
    error::{Error, Result},
    events::clock::WallClock,
    model::{FlowLine, Hop, Line, Packet},
    output::{record::TAG, Format, Summary},
    pcapfilter::libpcap::Program,
    pcapng::{Block, Reader},
    probe::counters::HopTotals,
    tui::{Feed, HopCount},
};

/// One hop's `flowtrace:` comment, as `output::record` writes it.
#[derive(Deserialize)]
struct HopRecord {
    pkt: u64,
    hop: u64,
    hops: u64,
    data: Hop,
    /// On a packet's first hop: the packet without its hops.
    packet: Option<Packet>,
}

/// What a `flowtrace:` comment holds: a hop of a packet, or a line of the model (`lost`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Hop(Box<HopRecord>),
    Line(Box<Line>),
}

/// What a recording gives back, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Replayed {
    Packet(Box<Packet>),
    Lost(u64),
}

#[derive(Default)]
struct Partial {
    head: Option<Packet>,
    hops: BTreeMap<u64, Hop>,
    total: u64,
    /// The filter expression matched one of its hops' frames.
    matched: bool,
}

impl Partial {
    fn complete(&self) -> bool {
        self.head.is_some() && self.hops.len() as u64 == self.total
    }

    fn into_packet(self) -> Option<Packet> {
        let mut p = self.head?;
        p.hops = self.hops.into_values().collect();
        Some(p)
    }
}

/// Counts for the summary, from the packets themselves; flows by the core's flow table, as a
/// live run counts them.
struct Tally {
    packets: u64,
    drops: u64,
    flows: FlowTable,
    lost: u64,
    hops: BTreeMap<(String, String), (u64, u64)>,
    roles: BTreeMap<String, String>,
}

impl Default for Tally {
    fn default() -> Self {
        let mut flows = FlowTable::new(crate::pipeline::MAX_FLOWS);
        flows.keep_changes();
        Tally {
            packets: 0,
            drops: 0,
            flows,
            lost: 0,
            hops: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

impl Tally {
    fn add(&mut self, p: &Packet) {
        self.packets += 1;
        self.drops += u64::from(p.drop.as_ref().is_some_and(|d| d.counts()));
        if let Some(mut sample) = Sample::of(p) {
            // The wall-clock time the packet was first seen, as the flow's clock.
            sample.ts_ns = chrono::DateTime::parse_from_rfc3339(&p.time)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(self.packets);
            self.flows.add(sample);
        }
        for h in p.tc_hops() {
            let key = (h.iface.to_string(), h.dir.to_string());
            if let Some(role) = &h.role {
                self.roles.insert(key.0.clone(), role.to_string());
            }
            let e = self.hops.entry(key).or_default();
            e.0 += 1;
            e.1 += u64::from(h.len);
        }
    }

    /// Every flow, as the model's flow lines (for the dashboard).
    fn flow_lines(&mut self) -> Vec<FlowLine> {
        let clock = WallClock::wall();
        self.flows
            .take_changed()
            .into_iter()
            .map(|(k, s)| crate::model::flow(k, s, &clock))
            .collect()
    }

    /// The recorded hops as dashboard counters (a recording has no kernel counters).
    fn hop_counts(&self) -> Vec<HopCount> {
        self.hops
            .iter()
            .map(|((iface, dir), (packets, bytes))| HopCount {
                iface: iface.clone(),
                role: self.roles.get(iface).cloned().unwrap_or_default(),
                direction: if dir == "ingress" {
                    "ingress"
                } else {
                    "egress"
                },
                packets: *packets,
                bytes: *bytes,
                lost: 0,
            })
            .collect()
    }

    fn summary(self) -> Summary {
        Summary {
            packets: self.packets,
            flows: self.flows.seen(),
            drops: self.drops,
            lost: self.lost,
            lost_by: [0; 3],
            kernel_evicted: Default::default(),
            hops: self
                .hops
                .into_iter()
                .map(|((iface, dir), (packets, bytes))| HopTotals {
                    iface,
                    direction: if dir == "ingress" {
                        "ingress"
                    } else {
                        "egress"
                    },
                    packets,
                    bytes,
                    lost: 0,
                })
                .collect(),
            discarded: Default::default(),
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// What walking a recording found besides its packets.
struct Walked {
    tally: Tally,
    truncated: Option<String>,
    incomplete: usize,
}

/// One `flowtrace:` record: a loss is passed on, a hop joins its packet, and a packet with
/// all its hops is passed on (with a filter, if one of its Ethernet frames matched).
fn join(
    partial: &mut BTreeMap<u64, Partial>,
    tally: &mut Tally,
    rec: Record,
    filter: Option<&Program>,
    frame: Option<(Vec<u8>, u32)>,
    each: &mut impl FnMut(Replayed) -> Result<()>,
) -> Result<()> {
    let rec = match rec {
        Record::Line(line) => {
            if let Line::Lost(l) = *line {
                tally.lost += l.count;
                each(Replayed::Lost(l.count))?;
            }
            return Ok(());
        }
        Record::Hop(h) => h,
    };
    let HopRecord {
        pkt,
        hop,
        hops: total,
        data,
        packet,
    } = *rec;
    let p = partial.entry(pkt).or_default();
    p.total = total;
    if let Some(head) = packet {
        p.head = Some(head);
    }
    p.hops.insert(hop, data);
    if let (Some(f), Some((data, len))) = (filter, &frame) {
        p.matched |= f.matches_captured(data, *len);
    }
    if p.complete() {
        let shown = filter.is_none() || p.matched;
        if let Some(v) = partial.remove(&pkt).and_then(Partial::into_packet) {
            if shown {
                tally.add(&v);
                each(Replayed::Packet(Box::new(v)))?;
            }
        }
    }
    Ok(())
}

/// Calls `each` with every packet of the recording at `path`, in order; with a filter, only
/// those it matches at one of their Ethernet hops (as a live run with that filter shows them).
fn walk(
    path: &Path,
    filter: Option<&Program>,
    mut each: impl FnMut(Replayed) -> Result<()>,
) -> Result<Walked> {
    let file =
        File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut reader = Reader::new(BufReader::new(file));
    let mut partial: BTreeMap<u64, Partial> = BTreeMap::new();
    let mut tally = Tally::default();
    let mut blocks = 0u64;
    let mut truncated = None;
    // Each section's interfaces' link types: the filter is compiled for Ethernet.
    let mut linktypes: Vec<u16> = Vec::new();
    // flowtrace records read, shown or not.
    let mut records = 0u64;
    loop {
        let block = match reader.next_block() {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) if e.is_truncation() => {
                truncated = Some(e.to_string());
                break;
            }
            Err(e) => return Err(bad(path, e.to_string())),
        };
        blocks += 1;
        let (comments, frame) = match block {
            Block::Section { .. } => {
                linktypes.clear();
                continue;
            }
            Block::Interface { linktype, .. } => {
                linktypes.push(linktype);
                continue;
            }
            Block::Other { .. } => continue,
            Block::Packet {
                comments,
                data,
                orig_len,
                interface,
                ..
            } => {
                let ethernet = linktypes.get(interface as usize) == Some(&LINKTYPE_ETHERNET);
                (comments, ethernet.then_some((data, orig_len)))
            }
        };
        let Some(machine) = comments.iter().find_map(|c| c.strip_prefix(TAG)) else {
            continue;
        };
        let rec: Record = serde_json::from_str(machine).map_err(|e| {
            bad(
                path,
                format!("a flowtrace comment is not a record flowtrace writes ({e})"),
            )
        })?;
        records += 1;
        join(&mut partial, &mut tally, rec, filter, frame, &mut each)?;
    }
    // Packets cut short by the end of the file: what was recorded of them.
    let incomplete = partial.len();
    for (_, p) in partial {
        if filter.is_some() && !p.matched {
            continue;
        }
        if let Some(v) = p.into_packet() {
            tally.add(&v);
            each(Replayed::Packet(Box::new(v)))?;
        }
    }
    if blocks == 0 {
        return Err(bad(path, "it holds no blocks"));
    }
    if records == 0 && truncated.is_none() {
        return Err(bad(
            path,
            "it holds no flowtrace records (was it written by `flowtrace --write`?)",
        ));
    }
    Ok(Walked {
        tally,
        truncated,
        incomplete,
    })
}

fn warn_truncated(w: &Walked) {
    if let Some(t) = &w.truncated {
        let cut = if w.incomplete > 0 {
            format!(" ({} packet(s) incomplete)", w.incomplete)
        } else {
            String::new()
        };
        eprintln!("flowtrace: warning: {t}; showed everything before it{cut}");
    }
}

/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u16 = 1;

fn compile(args: &ReadArgs) -> Result<Option<Program>> {
    Ok(args
        .filter_expression()
        .map(|e| Program::compile(&e))
        .transpose()?)
}

pub fn read(args: &ReadArgs) -> Result<()> {
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let filter = compile(args)?;
    let mut out = BufWriter::new(std::io::stdout());
    let werr = |e| Error::io("writing output", e);
    let walked = walk(&args.file, filter.as_ref(), |r| {
        let line = match r {
            Replayed::Lost(n) => format.lost(n),
            Replayed::Packet(mut p) => {
                // A recording's text is anyone's: made safe for the terminal (JSON escapes it).
                if !args.json {
                    crate::output::terminal::clean_packet(&mut p);
                }
                format.packet(&p)
            }
        };
        writeln!(out, "{line}").map_err(werr)
    })?;
    warn_truncated(&walked);
    let summary = format.summary(&walked.tally.summary());
    if args.json {
        writeln!(out, "{summary}").map_err(werr)?;
        out.flush().map_err(werr)?;
    } else {
        out.flush().map_err(werr)?;
        eprintln!("{summary}");
    }
    Ok(())
}

/// `flowtrace read --tui FILE`: the recording replayed into the dashboard.
pub async fn read_tui(args: &ReadArgs) -> Result<()> {
    let filter = compile(args)?;
    let mut packets = Vec::new();
    let mut lost = 0;
    let walked = walk(&args.file, filter.as_ref(), |r| {
        match r {
            Replayed::Lost(n) => lost += n,
            Replayed::Packet(p) => packets.push(*p),
        }
        Ok(())
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(packets.len() + 8);
    let n = packets.len();
    for v in packets {
        let _ = tx.try_send(Feed::Packet(Box::new(v)));
    }
    let mut walked = walked;
    let _ = tx.try_send(Feed::Flows(walked.tally.flow_lines()));
    let _ = tx.try_send(Feed::Counters(walked.tally.hop_counts()));
    let _ = tx.try_send(Feed::Lost(lost));
    let _ = tx.try_send(Feed::Status(format!(
        "replaying {} ({n} packets)",
        args.file.display()
    )));
    let _ = tx.try_send(Feed::Finished("end of the recording (q to quit)".into()));
    drop(tx);
    let title = format!("flowtrace — {}", args.file.display());
    crate::tui::run(rx, title)
        .await
        .map_err(|e| Error::io("running the dashboard", e))?;
    warn_truncated(&walked);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::{
            explain::Explainer,
            packet::tests::{masqueraded_syn, points},
        },
        events::clock::WallClock,
        output::record::{RecordOptions, Recorder},
    };

    #[test]
    fn a_recording_replays_its_packets_and_its_losses() {
        let dir = std::env::temp_dir().join(format!("flowtrace-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.pcapng");
        let opts = RecordOptions {
            path: path.clone(),
            rotate: None,
            max_files: None,
            snaplen: 0,
            wall_offset_ns: 0,
        };
        let mut r = Recorder::create(opts, "test".into()).expect("create");
        let e = Explainer::empty().explain(masqueraded_syn(), &points());
        let v = crate::model::packet(
            &e,
            &points(),
            &WallClock::with_offset(0),
            &mut Default::default(),
        );
        r.record(&e, &v).expect("record");
        r.lost(50_000, 7).expect("lost");
        r.flush().expect("flush");
        drop(r);

        let mut seen = Vec::new();
        let walked = walk(&path, None, |x| {
            seen.push(x);
            Ok(())
        })
        .expect("walk");
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0],
            Replayed::Packet(Box::new(v)),
            "the packet exactly as it was printed live"
        );
        assert_eq!(seen[1], Replayed::Lost(7));
        let summary = walked.tally.summary();
        assert_eq!((summary.packets, summary.lost), (1, 7));

        // A filter, as `tcpdump -r FILE EXPR`: the SYN matches at its hops, UDP does not; the
        // address after MASQUERADE matches at the uplink hop only, which is enough.
        for (expr, packets) in [
            ("tcp port 8080", 1),
            ("udp", 0),
            ("src host 198.51.100.1", 1),
        ] {
            let prog = Program::compile(expr).expect("compiles");
            let mut n = 0;
            let walked = walk(&path, Some(&prog), |x| {
                n += u64::from(matches!(x, Replayed::Packet(_)));
                Ok(())
            })
            .expect("walk");
            assert_eq!(
                (n, walked.tally.summary().packets),
                (packets, packets),
                "`{expr}`"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

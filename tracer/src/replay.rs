//! `flowtrace read FILE.pcapng`: prints a recording exactly as the live run printed it, from
//! the file alone. Each hop's block carries a `flowtrace:` JSON comment; the hops of one packet
//! are joined back into the packet's JSON and rendered by the same code as a live run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::Path,
};

use serde_json::Value;

use crate::{
    cli::ReadArgs,
    error::{Error, Result},
    output::{
        pcapng::{Block, Reader},
        record::TAG,
        Format, Summary,
    },
    probe::counters::HopTotals,
};

#[derive(Default)]
struct Partial {
    head: Option<Value>,
    hops: BTreeMap<u64, Value>,
    total: u64,
}

impl Partial {
    fn complete(&self) -> bool {
        self.head.is_some() && self.hops.len() as u64 == self.total
    }

    fn into_packet(self) -> Option<Value> {
        let mut v = self.head?;
        v["hops"] = Value::Array(self.hops.into_values().collect());
        Some(v)
    }
}

/// Counts for the summary, from the packets themselves.
#[derive(Default)]
struct Tally {
    packets: u64,
    drops: u64,
    flows: BTreeSet<String>,
    hops: BTreeMap<(String, String), (u64, u64)>,
}

impl Tally {
    fn add(&mut self, v: &Value) {
        self.packets += 1;
        self.drops += u64::from(v["drop"].is_object());
        let (a, b) = (v["src"].to_string(), v["dst"].to_string());
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        self.flows
            .insert(format!("{} {} {lo} {hi}", v["container"], v["proto"]));
        for h in v["hops"].as_array().into_iter().flatten() {
            if h["point"] == "tc" {
                let key = (
                    h["iface"].as_str().unwrap_or("").to_owned(),
                    h["dir"].as_str().unwrap_or("").to_owned(),
                );
                let e = self.hops.entry(key).or_default();
                e.0 += 1;
                e.1 += h["len"].as_u64().unwrap_or(0);
            }
        }
    }

    fn summary(self) -> Summary {
        Summary {
            packets: self.packets,
            flows: self.flows.len() as u64,
            drops: self.drops,
            lost: 0,
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
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

pub fn read(args: &ReadArgs) -> Result<()> {
    let path = args.file.as_path();
    let file =
        File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut reader = Reader::new(BufReader::new(file));
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let werr = |e| Error::io("writing output", e);
    let mut partial: BTreeMap<u64, Partial> = BTreeMap::new();
    let mut tally = Tally::default();
    let mut blocks = 0u64;
    let mut truncated = None;
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
        let Block::Packet { comments, .. } = block else {
            continue;
        };
        let Some(machine) = comments.iter().find_map(|c| c.strip_prefix(TAG)) else {
            continue;
        };
        let rec: Value = serde_json::from_str(machine)
            .map_err(|e| bad(path, format!("a flowtrace comment is not valid JSON ({e})")))?;
        let (Some(pkt), Some(hop), Some(total)) = (
            rec["pkt"].as_u64(),
            rec["hop"].as_u64(),
            rec["hops"].as_u64(),
        ) else {
            return Err(bad(path, "a flowtrace comment lacks pkt/hop/hops"));
        };
        let p = partial.entry(pkt).or_default();
        p.total = total;
        if let Some(head) = rec.get("packet") {
            p.head = Some(head.clone());
        }
        p.hops.insert(hop, rec["data"].clone());
        if p.complete() {
            if let Some(v) = partial.remove(&pkt).and_then(Partial::into_packet) {
                tally.add(&v);
                writeln!(out, "{}", format.packet_value(&v)).map_err(werr)?;
            }
        }
    }
    // Packets cut short by the end of the file: what was recorded of them.
    let cut = partial.len();
    for (_, p) in partial {
        if let Some(v) = p.into_packet() {
            tally.add(&v);
            writeln!(out, "{}", format.packet_value(&v)).map_err(werr)?;
        }
    }
    if blocks == 0 {
        return Err(bad(path, "it holds no blocks"));
    }
    if tally.packets == 0 && truncated.is_none() {
        return Err(bad(
            path,
            "it holds no flowtrace records (was it written by `flowtrace --write`?)",
        ));
    }
    let summary = format.summary(&tally.summary());
    if args.json {
        writeln!(out, "{summary}").map_err(werr)?;
        out.flush().map_err(werr)?;
    } else {
        out.flush().map_err(werr)?;
        eprintln!("{summary}");
    }
    if let Some(t) = truncated {
        eprintln!(
            "flowtrace: warning: {t}; showed everything before it{}",
            if cut > 0 {
                format!(" ({cut} packet(s) incomplete)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

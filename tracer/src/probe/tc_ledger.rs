//! What a clsact/netlink attachment would leave behind if flowtrace were killed, written down
//! so that the next start can remove it.
//!
//! TCX links are fd-owned: the kernel removes them when the process dies, even by SIGKILL.
//! Netlink tc filters and a clsact qdisc are not. So every netlink filter flowtrace attaches,
//! and every clsact qdisc it adds, is recorded in `/run/flowtrace/tc-PID` before the start-up
//! goes on; an orderly exit removes them and the file. At start-up, [`sweep`] reads the files
//! whose owner is gone (the pid is dead, or reused by another process: the start time is
//! recorded too) and removes exactly what they list, checking first that each filter is still
//! one of ours (`tc -j filter show`: same priority, handle and program name).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use aya::programs::{
    tc::{SchedClassifierLink, TcHandle},
    Link as _, TcAttachType,
};

/// Where the ledgers live (tmpfs: a reboot clears them together with what they describe).
pub const DIR: &str = "/run/flowtrace";

/// The names of our tc programs, as `tc filter show` prints them (`tc_ingress`, `tc_egress`,
/// with or without the ELF section suffix).
const PROG_NAMES: [&str; 2] = ["tc_ingress", "tc_egress"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Filter {
        ifindex: u32,
        iface: String,
        ingress: bool,
        prio: u16,
        handle: u32,
    },
    Qdisc {
        ifindex: u32,
        iface: String,
    },
}

impl Entry {
    fn line(&self) -> String {
        match self {
            Entry::Filter {
                ifindex,
                iface,
                ingress,
                prio,
                handle,
            } => format!(
                "filter {ifindex} {iface} {} {prio} {handle}",
                if *ingress { "ingress" } else { "egress" }
            ),
            Entry::Qdisc { ifindex, iface } => format!("qdisc {ifindex} {iface}"),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["filter", ifindex, iface, dir, prio, handle] => Some(Entry::Filter {
                ifindex: ifindex.parse().ok()?,
                iface: (*iface).to_owned(),
                ingress: match *dir {
                    "ingress" => true,
                    "egress" => false,
                    _ => return None,
                },
                prio: prio.parse().ok()?,
                handle: handle.parse().ok()?,
            }),
            ["qdisc", ifindex, iface] => Some(Entry::Qdisc {
                ifindex: ifindex.parse().ok()?,
                iface: (*iface).to_owned(),
            }),
            _ => None,
        }
    }
}

/// A ledger file's contents: its owner and what it attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// The owner's start time (field 22 of /proc/PID/stat), to tell a reused pid.
    pub start: u64,
    pub entries: Vec<Entry>,
}

impl Record {
    pub fn render(&self) -> String {
        let mut s = format!("flowtrace {} {}\n", self.pid, self.start);
        for e in &self.entries {
            s.push_str(&e.line());
            s.push('\n');
        }
        s
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next()?.split_whitespace().collect();
        let ["flowtrace", pid, start] = head.as_slice() else {
            return None;
        };
        Some(Record {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            // A line cut short by a crash mid-write is skipped, not fatal.
            entries: lines.filter_map(Entry::parse).collect(),
        })
    }
}

/// The start time of process `pid`, or None if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process's ledger. Netlink filters are owned here (detached on drop), then the qdiscs
/// flowtrace added are removed if no filter is left on them, then the file.
pub struct Ledger {
    path: PathBuf,
    record: Record,
    links: Vec<SchedClassifierLink>,
    qdiscs: Vec<String>,
}

impl Default for Ledger {
    fn default() -> Self {
        let pid = std::process::id();
        Ledger {
            path: Path::new(DIR).join(format!("tc-{pid}")),
            record: Record {
                pid,
                start: start_time(pid).unwrap_or(0),
                entries: Vec::new(),
            },
            links: Vec::new(),
            qdiscs: Vec::new(),
        }
    }
}

impl Ledger {
    fn save(&self) -> std::io::Result<()> {
        fs::create_dir_all(DIR)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(self.record.render().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
    }

    /// Records a clsact qdisc flowtrace added (before anything is attached to it).
    pub fn qdisc_added(&mut self, ifindex: u32, iface: &str) {
        self.qdiscs.push(iface.to_owned());
        self.record.entries.push(Entry::Qdisc {
            ifindex,
            iface: iface.to_owned(),
        });
        if let Err(e) = self.save() {
            log::warn!("cannot write {}: {e}", self.path.display());
        }
    }

    /// A clsact qdisc was already on `iface`: if another live flowtrace added it, this one
    /// shares the duty to remove it (whoever leaves last, with no filter left on it, does).
    /// A qdisc that was there before any flowtrace is never ours to remove.
    pub fn qdisc_found(&mut self, ifindex: u32, iface: &str) {
        let added_by_flowtrace = ledgers()
            .into_iter()
            .filter(|(_, r)| r.pid != self.record.pid && alive(r))
            .any(|(_, r)| {
                r.entries.iter().any(|e| {
                    matches!(e, Entry::Qdisc { ifindex: i, iface: n } if *i == ifindex && n == iface)
                })
            });
        if added_by_flowtrace && !self.qdiscs.iter().any(|q| q == iface) {
            self.qdisc_added(ifindex, iface);
        }
    }

    /// Takes ownership of a netlink filter and records it.
    pub fn filter_attached(&mut self, ifindex: u32, iface: &str, link: SchedClassifierLink) {
        if let (Ok(prio), Ok(handle), Ok(kind)) =
            (link.priority(), link.handle(), link.attach_type())
        {
            self.record.entries.push(Entry::Filter {
                ifindex,
                iface: iface.to_owned(),
                ingress: matches!(kind, TcAttachType::Ingress),
                prio,
                handle: handle.into(),
            });
            if let Err(e) = self.save() {
                log::warn!("cannot write {}: {e}", self.path.display());
            }
        }
        self.links.push(link);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Dropping a link detaches its filter.
        self.links.clear();
        for iface in &self.qdiscs {
            // Never pull the qdisc from under filters another tool (or flowtrace) put there.
            if filters_on(iface).is_some_and(|n| n == 0) {
                let _ = Command::new(super::privilege::tool("tc"))
                    .args(["qdisc", "del", "dev", iface, "clsact"])
                    .status();
            }
        }
        if !self.record.entries.is_empty() {
            let _ = fs::remove_file(&self.path);
            // Only succeeds when no other flowtrace has a ledger there.
            let _ = fs::remove_dir(DIR);
        }
    }
}

/// How many tc filters `iface` has on ingress and egress together; None if `tc` cannot say.
fn filters_on(iface: &str) -> Option<usize> {
    let mut n = 0;
    for dir in ["ingress", "egress"] {
        let out = Command::new(super::privilege::tool("tc"))
            .args(["-j", "filter", "show", "dev", iface, dir])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        n += v.as_array().map_or(0, |a| {
            a.iter().filter(|f| f.get("options").is_some()).count()
        });
    }
    Some(n)
}

/// Whether `iface` has, in `dir`, a bpf filter at `prio`/`handle` running one of our programs.
fn is_ours(iface: &str, ingress: bool, prio: u16, handle: u32) -> bool {
    let dir = if ingress { "ingress" } else { "egress" };
    let Ok(out) = Command::new(super::privilege::tool("tc"))
        .args(["-j", "filter", "show", "dev", iface, dir])
        .output()
    else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    v.as_array().is_some_and(|filters| {
        filters.iter().any(|f| {
            let name = f["options"]["bpf_name"].as_str().unwrap_or_default();
            f["pref"].as_u64() == Some(u64::from(prio))
                && f["options"]["handle"]
                    .as_str()
                    .and_then(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok())
                    == Some(handle)
                && PROG_NAMES.iter().any(|p| name.starts_with(p))
        })
    })
}

/// What [`sweep`] removed, per dead owner.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub pid: u32,
    pub filters: usize,
    pub qdiscs: usize,
    /// Entries that were already gone (the interface vanished, or someone removed them).
    pub gone: usize,
}

fn ifindex_of(iface: &str) -> Option<u32> {
    fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Every ledger in [`DIR`], with its path.
fn ledgers() -> Vec<(PathBuf, Record)> {
    let Ok(dir) = fs::read_dir(DIR) else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tc-") && !n.ends_with(".tmp"))
        })
        .filter_map(|p| {
            let r = Record::parse(&fs::read_to_string(&p).ok()?)?;
            Some((p, r))
        })
        .collect()
}

/// Whether a ledger's owner is still running (same pid, same start time).
fn alive(r: &Record) -> bool {
    start_time(r.pid).is_some_and(|s| s == r.start)
}

/// Removes what killed flowtrace runs left behind (see the module docs).
pub fn sweep() -> Vec<Swept> {
    let mut out = Vec::new();
    for (path, record) in ledgers() {
        if alive(&record) {
            continue;
        }
        out.push(sweep_one(&record));
        let _ = fs::remove_file(&path);
    }
    let _ = fs::remove_dir(DIR);
    out
}

fn sweep_one(record: &Record) -> Swept {
    let mut swept = Swept {
        pid: record.pid,
        ..Swept::default()
    };
    for e in &record.entries {
        let Entry::Filter {
            ifindex,
            iface,
            ingress,
            prio,
            handle,
        } = e
        else {
            continue;
        };
        if ifindex_of(iface) != Some(*ifindex) || !is_ours(iface, *ingress, *prio, *handle) {
            swept.gone += 1;
            continue;
        }
        let kind = if *ingress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        };
        match SchedClassifierLink::attached(iface, kind, *prio, TcHandle::from(*handle), None)
            .map_err(|e| e.to_string())
            .and_then(|l| l.detach().map_err(|e| e.to_string()))
        {
            Ok(()) => swept.filters += 1,
            Err(e) => log::warn!("cannot remove a stale filter on {iface}: {e}"),
        }
    }
    for e in &record.entries {
        let Entry::Qdisc { ifindex, iface } = e else {
            continue;
        };
        if ifindex_of(iface) != Some(*ifindex) {
            swept.gone += 1;
        } else if filters_on(iface) == Some(0)
            && Command::new(super::privilege::tool("tc"))
                .args(["qdisc", "del", "dev", iface, "clsact"])
                .status()
                .is_ok_and(|s| s.success())
        {
            swept.qdiscs += 1;
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_skips_torn_lines() {
        let r = Record {
            pid: 4242,
            start: 987_654,
            entries: vec![
                Entry::Qdisc {
                    ifindex: 7,
                    iface: "veth1".into(),
                },
                Entry::Filter {
                    ifindex: 7,
                    iface: "veth1".into(),
                    ingress: true,
                    prio: 49152,
                    handle: 1,
                },
                Entry::Filter {
                    ifindex: 7,
                    iface: "veth1".into(),
                    ingress: false,
                    prio: 49151,
                    handle: 0x10001,
                },
            ],
        };
        let text = r.render();
        assert_eq!(Record::parse(&text), Some(r.clone()));
        // A crash in the middle of a write leaves a torn last line: it is skipped.
        let torn = format!("{text}filter 7 veth1 ingr");
        assert_eq!(Record::parse(&torn), Some(r));
        assert_eq!(Record::parse("not a ledger\n"), None);
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn start_time_tells_our_process_from_no_process() {
        let me = std::process::id();
        let s = start_time(me).unwrap_or(0);
        assert!(s > 0, "our own start time should be readable");
        assert_eq!(start_time(me), Some(s), "stable across reads");
        // pid_max is at most 2^22: this pid cannot exist.
        assert_eq!(start_time(u32::MAX - 1), None);
    }
}

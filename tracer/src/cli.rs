//! Command-line interface (clap). Parsing only; `main.rs` dispatches.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;

#[derive(Debug, Parser)]
#[command(
    name = "flowtrace",
    version,
    about = "Trace a Docker container's packets hop by hop: veth, bridge, netfilter, NAT, uplink, drops.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace live traffic (the default when no subcommand is given).
    Trace(Box<TraceArgs>),
    /// Print a recording made with --write, as the live run printed it.
    Read(ReadArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// A pcapng file written by `flowtrace --write`.
    pub file: std::path::PathBuf,

    /// One JSON object per line, as the live run's --json.
    #[arg(long, conflicts_with = "tui")]
    pub json: bool,

    /// Replay it in the dashboard.
    #[arg(long)]
    pub tui: bool,

    /// Only packets that match this tcpdump filter expression at one of their hops.
    #[arg(
        short = 'f',
        long = "filter",
        value_name = "EXPR",
        conflicts_with = "expression"
    )]
    pub filter: Option<String>,

    /// The filter expression as the last arguments, as `tcpdump -r FILE EXPRESSION` takes it.
    #[arg(value_name = "EXPRESSION")]
    pub expression: Vec<String>,
}

impl ReadArgs {
    /// The filter expression, from `-f` or the trailing words; None when there is none.
    pub fn filter_expression(&self) -> Option<String> {
        expression_of(&self.filter, &self.expression)
    }
}

fn expression_of(flag: &Option<String>, words: &[String]) -> Option<String> {
    let expr = match flag {
        Some(f) => f.clone(),
        None => words.join(" "),
    };
    (!expr.trim().is_empty()).then_some(expr)
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Container to trace, by name or id (repeatable).
    #[arg(short = 'c', long = "container", value_name = "NAME|ID", value_parser = parse_docker_name)]
    pub containers: Vec<String>,

    /// Trace every container attached to this Docker network.
    #[arg(short = 'n', long = "network", value_name = "NAME", value_parser = parse_docker_name)]
    pub networks: Vec<String>,

    /// Trace a network namespace that is not a Docker container, like one (repeatable):
    /// `/run/netns/NAME` or `/proc/PID/ns/net`. No Docker needed.
    #[arg(long = "netns", value_name = "PATH")]
    pub netns: Vec<std::path::PathBuf>,

    /// Also attach to this host interface (repeatable); alone, traces without Docker.
    #[arg(short = 'i', long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// Do not attach to the uplinks found in the routing table.
    #[arg(long)]
    pub no_uplinks: bool,

    /// Do not add the nftables table that marks the traced packets for nftrace (the rule
    /// that decided each netfilter hop is then named from counters, for drops only).
    #[arg(long)]
    pub no_nftrace: bool,

    /// Packets a second each nftrace marking rule marks at most (0: every one). Each traced
    /// packet costs the kernel a trace message per rule it meets: past this rate, hops name
    /// no rule and drops are named from counters.
    #[arg(long, default_value_t = 250, value_name = "N")]
    pub nftrace_rate: u32,

    /// One JSON object per line on stdout (see the JSON contract in the README).
    #[arg(long)]
    pub json: bool,

    /// Per-hop counters only, no per-packet events: the cheapest mode, for always-on use.
    #[arg(long, conflicts_with_all = ["raw", "flows", "write"])]
    pub counters: bool,

    /// One line per flow (counts and bytes each way, NAT, path) instead of one block per packet.
    #[arg(long, conflicts_with = "raw")]
    pub flows: bool,

    /// Print every observation as it arrives, without joining them into packets.
    #[arg(long)]
    pub raw: bool,

    /// Only packets of this protocol: tcp, udp, icmp, icmp6 (repeatable).
    #[arg(long = "proto", value_parser = crate::select::parse_proto)]
    pub protos: Vec<crate::events::packet::Proto>,

    /// Only packets to or from this address, at any hop (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<std::net::IpAddr>,

    /// Only packets with this source or destination port, at any hop (repeatable).
    #[arg(long = "port")]
    pub ports: Vec<u16>,

    /// Only packets that match this tcpdump filter expression (pcap-filter(7)) at some hop,
    /// with every hop of their flow, across NAT. Evaluated in the kernel.
    #[arg(short = 'f', long = "filter", value_name = "EXPR", conflicts_with_all = ["expression", "counters"])]
    pub filter: Option<String>,

    /// The filter expression as the last arguments, as tcpdump takes it: `tcp port 8080`.
    #[arg(value_name = "EXPRESSION", conflicts_with = "counters")]
    pub expression: Vec<String>,

    /// Record every hop of every traced packet to this pcapng file (mode 0600). As with
    /// `tcpdump -w`, packets are then not printed (the dashboard, --json and --flows still
    /// show them); --print prints them too.
    #[arg(short = 'w', long, value_name = "FILE.pcapng")]
    pub write: Option<std::path::PathBuf>,

    /// With --write: print each packet as well, as tcpdump's --print does.
    #[arg(long, requires = "write")]
    pub print: bool,

    /// Also write warnings and notes, with their time, to this file (mode 0600); useful with
    /// the dashboard, which shows only the latest on its status line.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<std::path::PathBuf>,

    /// Bytes captured of each packet at each tc hop (0: the whole packet, up to 16 KiB), for
    /// --write and filter expressions; without either, an IPv4 packet's headers are enough.
    #[arg(long, default_value_t = tracer_common::DEFAULT_SNAP, value_name = "BYTES")]
    pub snaplen: u32,

    /// The kernel's buffer for per-packet records, in KiB as tcpdump's -B (rounded up to a
    /// power of two, 4 KiB to 1 GiB). It holds bursts the reader has not caught up with;
    /// it is mapped into flowtrace twice, so its size counts twice in flowtrace's RSS.
    #[arg(short = 'B', long, value_name = "KiB", default_value_t = DEFAULT_BUFFER_KIB,
          value_parser = clap::value_parser!(u32).range(4..=1 << 20))]
    pub buffer_size: u32,

    /// With --write: start a new file when the current one reaches this size (e.g. 100M).
    #[arg(long, value_parser = parse_size, requires = "write")]
    pub rotate: Option<u64>,

    /// With --rotate: keep only the newest N files.
    #[arg(long, value_name = "N", requires = "rotate", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_files: Option<u32>,

    /// How to attach the tc observers: TCX links (Linux ≥ 6.6, gone with the process even if it
    /// is killed), netlink filters on a clsact qdisc, or auto (TCX, else netlink).
    #[arg(long, value_enum, default_value_t = TcAttach::Auto, value_name = "MODE")]
    pub tc_attach: TcAttach,

    /// How to observe netfilter: BPF netfilter links around each table (Linux ≥ 6.4),
    /// fentry/fexit or kprobes on nf_hook_slow (hook level), or auto (in that order).
    #[arg(long, value_enum, default_value_t = NfAttach::Auto, value_name = "MODE")]
    pub nf_attach: NfAttach,

    /// Never open the terminal dashboard (headless: progress on stderr).
    #[arg(long)]
    pub no_tui: bool,

    /// Stop after this long (e.g. 500ms, 10s, 2m).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many packets are shown (observations with --raw).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// More log lines on stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl TraceArgs {
    /// The filter expression, from `-f` or the trailing words; None when there is none.
    pub fn filter_expression(&self) -> Option<String> {
        expression_of(&self.filter, &self.expression)
    }

    /// Whether shown packets are printed on stdout: always, but for a recording (`--write`)
    /// that asked for no output of its own, which prints only its progress and summary (on
    /// stderr), as `tcpdump -w` does. The dashboard, where it opens, shows them either way.
    pub fn prints_packets(&self) -> bool {
        self.write.is_none() || self.print || self.json || self.flows || self.raw
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NfAttach {
    Auto,
    Links,
    Fexit,
    Kprobe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    Auto,
    Tcx,
    Netlink,
}

/// `--buffer-size`'s default: 8 MiB. Under the lab's UDP flood (ten records a packet), 4 MiB
/// lost 3.2–3.5M records in 6 s, 8 MiB 2.1–2.2M, 16 MiB 1.5M; the soak's RSS is 8 MiB higher.
pub const DEFAULT_BUFFER_KIB: u32 = 8192;

impl TraceArgs {
    /// `--buffer-size` in bytes, a power of two as the kernel's ring buffer needs.
    pub fn ring_bytes(&self) -> u32 {
        (self.buffer_size.clamp(4, 1 << 20) << 10).next_power_of_two()
    }
}

/// Parses `500K`, `100M`, `2G` (powers of 1024) or a bare number of bytes.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let bad = || Error::InvalidSize(s.to_owned());
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(bad)
}

/// A Docker container or network name, or an id: letters, digits, `_`, `.` and `-`, not
/// starting with a punctuation mark (Docker's own rule), at most 255 characters. Anything
/// else would end up in the Docker API's URL path.
pub fn parse_docker_name(s: &str) -> Result<String, Error> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Error::InvalidName(s.escape_debug().to_string()))
    }
}

/// The longest duration taken: a year.
const MAX_DURATION_S: f64 = 365.0 * 24.0 * 3600.0;

/// Parses `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    let bad = || Error::InvalidDuration(s.to_owned());
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_DURATION_S {
        return Err(bad());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3").ok(), Some(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        // Too large for a Duration, or for any run: an error, never a panic.
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("366d").is_err());
        assert!(parse_duration("400h").is_ok());
    }

    #[test]
    fn container_is_repeatable_and_trace_is_default() {
        let cli = Cli::parse_from(["flowtrace", "-c", "a", "--container", "b", "--json"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.trace.containers, vec!["a", "b"]);
        assert!(cli.trace.json);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100M").ok(), Some(100 << 20));
        assert_eq!(parse_size("2GiB").ok(), Some(2 << 30));
        assert_eq!(parse_size("512k").ok(), Some(512 << 10));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
    }

    /// `-B` is in KiB, as tcpdump's, and becomes the power of two the kernel needs.
    #[test]
    fn buffer_size_is_kib_rounded_up_to_a_power_of_two() {
        let bytes = |args: &[&str]| {
            let mut v = vec!["flowtrace", "-c", "a"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v).map(|c| c.trace.ring_bytes())
        };
        assert_eq!(bytes(&[]).ok(), Some(8 << 20));
        assert_eq!(bytes(&["-B", "3000"]).ok(), Some(4 << 20));
        assert_eq!(bytes(&["--buffer-size", "16384"]).ok(), Some(16 << 20));
        assert_eq!(bytes(&["-B", "4"]).ok(), Some(4 << 10));
        assert_eq!(bytes(&["-B", "1048576"]).ok(), Some(1 << 30));
        for bad in ["0", "3", "1048577", "lots"] {
            assert!(bytes(&["-B", bad]).is_err(), "-B {bad}");
        }
    }

    #[test]
    fn a_recording_prints_packets_only_when_asked() {
        let run = |args: &[&str]| Cli::parse_from(args).trace.prints_packets();
        assert!(run(&["flowtrace", "-c", "x"]));
        assert!(!run(&["flowtrace", "-c", "x", "-w", "t.pcapng"]));
        assert!(run(&["flowtrace", "-c", "x", "-w", "t.pcapng", "--print"]));
        assert!(run(&["flowtrace", "-c", "x", "-w", "t.pcapng", "--json"]));
        assert!(run(&["flowtrace", "-c", "x", "-w", "t.pcapng", "--flows"]));
        assert!(Cli::try_parse_from(["flowtrace", "-c", "x", "--print"]).is_err());
    }

    #[test]
    fn read_is_a_subcommand_and_rotation_needs_write() {
        let cli = Cli::parse_from(["flowtrace", "read", "t.pcapng", "--json"]);
        assert!(matches!(cli.command, Some(Command::Read(ref r)) if r.json));
        assert!(Cli::try_parse_from(["flowtrace", "-c", "x", "--rotate", "1M"]).is_err());
    }

    #[test]
    fn docker_names_are_docker_names() {
        for ok in ["ens_monitor_cron", "d20c58952778", "a", "web-1.prod"] {
            assert_eq!(parse_docker_name(ok).ok().as_deref(), Some(ok));
        }
        for bad in [
            "",
            " ",
            "-x",
            "../containers",
            "a b",
            "x?y",
            "\u{1b}[2J",
            &"a".repeat(256),
        ] {
            let e = parse_docker_name(bad).expect_err(bad);
            assert!(e.hint().is_some(), "{e}");
            assert!(!e.to_string().contains('\u{1b}'), "escaped: {e}");
        }
    }

    /// Property: any text at all, as a duration, a size or a name, parses or is an error.
    #[test]
    fn any_value_parses_or_is_an_error_never_a_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet: Vec<char> = "0123456789.eE+-smhdKMGBi \u{1b}\u{0}é/_".chars().collect();
        for _ in 0..20_000 {
            let mut t = String::new();
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = parse_duration(&t);
            let _ = parse_size(&t);
            let _ = parse_docker_name(&t);
        }
    }

    #[test]
    fn bad_duration_is_a_parse_error() {
        assert!(Cli::try_parse_from(["flowtrace", "--duration", "soon"]).is_err());
    }
}

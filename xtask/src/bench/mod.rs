//! `cargo xtask bench`: flowtrace's cost, measured side by side in one run, in the lab.
//!
//! For every configuration (no tracer, flowtrace `--counters`, per-packet `--json`, `--write`
//! pcapng, and `tcpdump -i any -w` as the peer a user would pick instead) and every load (TCP
//! throughput and small-packet UDP rate, iperf3 from `ens_monitor_cron` to the lab's internet
//! namespace), it records the throughput and its ratio to the baseline, the tracer's events/s,
//! lost events, CPU seconds and peak RSS, with `kernel.bpf_stats_enabled` off as on users'
//! hosts; then the kernel cost of each BPF program, in a short pass of its own with the
//! statistics on. It prints a markdown table and writes every raw figure to JSON.
//!
//! Network safety: the lab (with its guard rules) is up for the whole run; before every load the
//! lab's safety check runs (the route to 198.51.100.2 leaves by `ftlab-up`, the guards are in
//! place) and the bench aborts otherwise. Every sender is bounded in time; every process it
//! starts is killed by pid, and every file it creates is removed, even on failure.

mod cost;
mod measure;
mod report;
pub mod soak;
pub mod user;

use cost::*;
use measure::*;
pub use report::run;
pub(crate) use report::workspace_root;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    cmd::{cmd, have},
    lab::{
        self,
        guard::{safety_check, Origin},
        state::State,
    },
    labguard::LabGuard,
};

const IPERF_PORT: &str = "5201";
/// UDP payload size of the small-packet load.
const UDP_LEN: u64 = 64;
/// How long a tracer gets after the load to drain its backlog before it is read and stopped.
const DRAIN: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Seconds per load (each configuration × load runs this long).
    #[arg(long, default_value_t = 8)]
    pub seconds: u32,
    /// Repeat every measurement N times and report the median.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Where to write all raw figures (default: target/bench.json in the workspace).
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
    /// Use target/release/flowtrace as it is (skip `cargo build --release -p tracer`).
    #[arg(long)]
    pub no_build: bool,
    /// Only these loads (repeatable; default all): tcp, udp, neighbour-tcp, neighbour-udp,
    /// host-udp.
    #[arg(long = "load", value_name = "LOAD")]
    pub loads: Vec<LoadArg>,
}

/// A load named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadArg {
    Tcp,
    Udp,
    NeighbourTcp,
    NeighbourUdp,
    HostUdp,
}

impl LoadArg {
    fn load(self) -> Load {
        match self {
            LoadArg::Tcp => Load::Tcp,
            LoadArg::Udp => Load::Udp,
            LoadArg::NeighbourTcp => Load::NeighbourTcp,
            LoadArg::NeighbourUdp => Load::NeighbourUdp,
            LoadArg::HostUdp => Load::HostUdp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Config {
    Baseline,
    Counters,
    Events,
    /// `--json --no-nftrace`: per-packet events without the nftables trace, side by side.
    EventsNoNftrace,
    /// `--json` with a filter expression that matches about 1% of the load's packets.
    Filtered,
    Pcapng,
    Tcpdump,
}

/// About 1% of each load: iperf3's UDP datagrams carry a 32-bit sequence number after two
/// 32-bit timestamps (udp[16:4]); TCP segments, every 100th IP ID.
const FILTER_1PCT: &str = "(udp and udp[16:4] % 100 == 0) or (tcp and ip[4:2] % 100 == 0)";

const CONFIGS: [Config; 7] = [
    Config::Baseline,
    Config::Counters,
    Config::Events,
    Config::EventsNoNftrace,
    Config::Filtered,
    Config::Pcapng,
    Config::Tcpdump,
];

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Counters => "counters",
            Config::Events => "events",
            Config::EventsNoNftrace => "events, no nftrace",
            Config::Filtered => "filter 1%",
            Config::Pcapng => "pcapng",
            Config::Tcpdump => "tcpdump",
        }
    }
    fn is_flowtrace(self) -> bool {
        matches!(
            self,
            Config::Counters
                | Config::Events
                | Config::EventsNoNftrace
                | Config::Filtered
                | Config::Pcapng
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Load {
    Tcp,
    Udp,
    /// The busy neighbour: `ens_monitor_peer` on the same bridge sends the load while
    /// flowtrace traces the idle `ens_monitor_cron` (which sends a few probes meanwhile).
    NeighbourTcp,
    NeighbourUdp,
    /// The host's own traffic, as on an internet-facing machine: the host sends the load to
    /// the lab's internet from its lab address while flowtrace traces the idle container.
    /// Its packets meet no tc observer before netfilter: they are judged at OUTPUT.
    HostUdp,
}

const LOADS: [Load; 5] = [
    Load::Tcp,
    Load::Udp,
    Load::NeighbourTcp,
    Load::NeighbourUdp,
    Load::HostUdp,
];

/// Under the neighbour's load: no tracer, the traced container's tracers, and tcpdump on the
/// traced container's veth (what an operator would run instead).
const NEIGHBOUR_CONFIGS: [Config; 5] = [
    Config::Baseline,
    Config::Counters,
    Config::Events,
    Config::EventsNoNftrace,
    Config::Tcpdump,
];

/// UDP probes the traced container sends during a neighbour load (each one echoed).
const PROBES: u32 = 100;

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Tcp => "tcp",
            Load::Udp => "udp",
            Load::NeighbourTcp => "neighbour tcp",
            Load::NeighbourUdp => "neighbour udp",
            Load::HostUdp => "host udp",
        }
    }
    fn unit(self) -> &'static str {
        if self.udp() {
            "pkt/s"
        } else {
            "bit/s"
        }
    }
    fn udp(self) -> bool {
        matches!(self, Load::Udp | Load::NeighbourUdp | Load::HostUdp)
    }
    fn neighbour(self) -> bool {
        matches!(self, Load::NeighbourTcp | Load::NeighbourUdp)
    }
    /// Does someone else than the traced container send the load (which it then never
    /// passes), while the traced container sends its probes?
    fn idle_container(self) -> bool {
        self.neighbour() || self == Load::HostUdp
    }
    /// Which container sends the load, from which address; `None`: the host, from its lab
    /// address (`lab::UPLINK_IP`).
    fn sender(self) -> Option<(&'static str, &'static str)> {
        match self {
            Load::HostUdp => None,
            _ if self.neighbour() => Some((lab::PEER, lab::PEER_IP)),
            _ => Some((lab::CONTAINER, lab::CONTAINER_IP)),
        }
    }
    fn configs(self) -> &'static [Config] {
        if self.idle_container() {
            &NEIGHBOUR_CONFIGS
        } else {
            &CONFIGS
        }
    }
}

/// What a tracer (flowtrace or tcpdump) did during one measurement.
#[derive(Clone, Debug, Default, Serialize)]
struct TracerFigures {
    pid: u32,
    /// From spawn to "tracing…" / "listening on".
    startup_s: f64,
    /// flowtrace: packets shown (summary `packets`); tcpdump: packets captured.
    events: u64,
    events_per_s: f64,
    /// flowtrace: summary `lost`; tcpdump: packets dropped by kernel.
    lost: u64,
    /// flowtrace: packets counted by the kernel at the container's host veth (both ways).
    veth_packets: u64,
    /// Neighbour loads: the traced container's probes sent and echoed, and (flowtrace
    /// `--json`) how many were shown with the whole path out (veth, bridge, uplink).
    probes_sent: u32,
    probes_shown_full_path: Option<u32>,
    /// flowtrace: what it received and did not show (summary `discarded`).
    discarded: Value,
    /// utime+stime during the load window (from just before the load to just before SIGINT).
    cpu_s_load: f64,
    /// utime+stime over the whole process life, sampled just before SIGINT.
    cpu_s_total: f64,
    /// VmHWM, sampled just before SIGINT.
    peak_rss_kib: u64,
    /// VmRSS, sampled just before SIGINT: what it holds once started (the peak is start-up's).
    rss_kib: u64,
    /// Bytes and lines the tracer wrote to stdout (drained by the bench and discarded).
    stdout_bytes: u64,
    stdout_lines: u64,
    /// Size of the pcapng/pcap file written.
    file_bytes: Option<u64>,
    exit: String,
    /// flowtrace's final summary (JSON object), or tcpdump's statistics lines.
    summary: Value,
}

/// One measurement: one configuration under one load.
#[derive(Clone, Debug, Serialize)]
struct Run {
    config: Config,
    load: Load,
    rep: u32,
    /// bits/s received (TCP) or packets/s received (UDP).
    throughput: f64,
    unit: &'static str,
    /// Throughput / the same load's baseline in the same repetition.
    ratio: Option<f64>,
    iperf: Value,
    tracer: Option<TracerFigures>,
    /// flowtrace's kernel cost, measured in a pass of its own (`measure::cost_pass`).
    cost: Option<CostPass>,
    /// Tracers or iperf3 processes the bench did not start, seen just before this run.
    foreign: Vec<String>,
}

impl Run {
    fn bpf(&self) -> &BTreeMap<String, ProgCost> {
        static NONE: BTreeMap<String, ProgCost> = BTreeMap::new();
        self.cost.as_ref().map_or(&NONE, |c| &c.bpf)
    }
    fn tc(&self) -> ProgCost {
        let mut c = ProgCost::default();
        for k in ["tc_ingress", "tc_egress"] {
            if let Some(p) = self.bpf().get(k) {
                c.add(p);
            }
        }
        c
    }
    fn all_bpf(&self) -> ProgCost {
        let mut c = ProgCost::default();
        for p in self.bpf().values() {
            c.add(p);
        }
        c
    }
    fn row(&self) -> Row {
        let t = self.tracer.as_ref();
        let veth = self.cost.as_ref().map_or(0, |c| c.packets);
        let all = self.all_bpf();
        Row {
            config: self.config,
            load: self.load,
            throughput: Some(self.throughput),
            ratio: self.ratio,
            events_per_s: t.map(|t| t.events_per_s),
            lost: t.map(|t| t.lost as f64),
            cpu_s: t.map(|t| t.cpu_s_load),
            rss_mib: t.map(|t| t.rss_kib as f64 / 1024.0),
            peak_rss_mib: t.map(|t| t.peak_rss_kib as f64 / 1024.0),
            tc_ns_per_run: self.tc().ns_per_run(),
            nf_ns_per_run: self.bpf().get("nf_slot").and_then(ProgCost::ns_per_run),
            tc_runs_per_pkt: (veth > 0).then(|| self.tc().run_cnt as f64 / veth as f64),
            nf_runs_per_pkt: (veth > 0)
                .then(|| self.bpf().get("nf_slot").map_or(0, |p| p.run_cnt) as f64 / veth as f64),
            bpf_ns_per_pkt: (veth > 0 && all.run_cnt > 0)
                .then(|| all.run_time_ns as f64 / veth as f64),
        }
    }
}

/// One line of the table (a median over the repetitions when there are several).
#[derive(Clone, Debug, Serialize)]
struct Row {
    config: Config,
    load: Load,
    throughput: Option<f64>,
    ratio: Option<f64>,
    events_per_s: Option<f64>,
    lost: Option<f64>,
    cpu_s: Option<f64>,
    /// VmRSS at the end of the load.
    rss_mib: Option<f64>,
    peak_rss_mib: Option<f64>,
    tc_ns_per_run: Option<f64>,
    nf_ns_per_run: Option<f64>,
    /// tc program runs per packet at the container's veth.
    tc_runs_per_pkt: Option<f64>,
    nf_runs_per_pkt: Option<f64>,
    /// All of flowtrace's BPF run time divided by the packets at the container's veth.
    bpf_ns_per_pkt: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn median_row(rows: &[Row]) -> Row {
    let m = |f: fn(&Row) -> Option<f64>| median(rows.iter().filter_map(f).collect());
    Row {
        config: rows[0].config,
        load: rows[0].load,
        throughput: m(|r| r.throughput),
        ratio: m(|r| r.ratio),
        events_per_s: m(|r| r.events_per_s),
        lost: m(|r| r.lost),
        cpu_s: m(|r| r.cpu_s),
        rss_mib: m(|r| r.rss_mib),
        peak_rss_mib: m(|r| r.peak_rss_mib),
        tc_ns_per_run: m(|r| r.tc_ns_per_run),
        nf_ns_per_run: m(|r| r.nf_ns_per_run),
        tc_runs_per_pkt: m(|r| r.tc_runs_per_pkt),
        nf_runs_per_pkt: m(|r| r.nf_runs_per_pkt),
        bpf_ns_per_pkt: m(|r| r.bpf_ns_per_pkt),
    }
}

// ---------------------------------------------------------------------------------------------
// Processes the bench starts: always killed by pid, even on failure.

/// The last bytes a process wrote to stdout, and how much it wrote in all.
#[derive(Default)]
struct Drained {
    bytes: u64,
    lines: u64,
    tail: Vec<u8>,
}

const TAIL: usize = 256 * 1024;

fn drain(mut r: impl Read) -> Drained {
    let mut d = Drained::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let chunk = &buf[..n];
                d.bytes += n as u64;
                d.lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                d.tail.extend_from_slice(chunk);
                if d.tail.len() > 2 * TAIL {
                    let cut = d.tail.len() - TAIL;
                    d.tail.drain(..cut);
                }
            }
        }
    }
    d
}

struct Proc {
    what: String,
    child: Child,
    stdout: Option<JoinHandle<Drained>>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    stderr: Option<JoinHandle<()>>,
    ready: Option<mpsc::Receiver<()>>,
}

impl Proc {
    /// Spawn with stdout drained (and discarded, but for its tail) and stderr collected; `ready`
    /// is signalled by the first stderr line containing `marker`.
    fn spawn(mut c: Command, what: &str, marker: Option<&'static str>) -> Result<Self> {
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdout = child
            .stdout
            .take()
            .map(|o| std::thread::spawn(move || drain(o)));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().map(|e| {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(e).lines().map_while(Result::ok) {
                    if marker.is_some_and(|m| line.contains(m)) {
                        let _ = tx.send(());
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            })
        });
        Ok(Proc {
            what: what.to_owned(),
            child,
            stdout,
            stderr_lines: lines,
            stderr,
            ready: marker.map(|_| rx),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        self.stderr_lines
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let Some(rx) = self.ready.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!(
                    "{} exited before it was ready ({st}):\n{}",
                    self.what,
                    self.stderr_text()
                );
            }
        }
        bail!(
            "{} was not ready within {timeout:?}:\n{}",
            self.what,
            self.stderr_text()
        )
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Wait up to `timeout` for the process to exit; SIGKILL it after that.
    fn wait_bounded(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.to_string());
            }
            if Instant::now() >= deadline {
                self.signal(libc::SIGKILL);
                let st = self.child.wait()?;
                return Ok(format!("killed after {timeout:?} ({st})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, wait (bounded), then collect stdout's tail and stderr.
    fn finish(mut self, sig: Option<libc::c_int>, timeout: Duration) -> Result<Finished> {
        if let Some(s) = sig {
            self.signal(s);
        }
        let exit = self.wait_bounded(timeout)?;
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        let stderr = self.stderr_text();
        Ok(Finished { exit, out, stderr })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

struct Finished {
    exit: String,
    out: Drained,
    stderr: String,
}

/// A file the bench creates; removed when dropped.
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// One measurement.

struct Ctx {
    bin: PathBuf,
    seconds: u32,
    host_veth: String,
    bridge: String,
    tag: String,
}

//! The kernel cost of flowtrace's BPF programs: their `run_time_ns`/`run_cnt` from bpftool,
//! read in a pass of their own with `kernel.bpf_stats_enabled=1` (`cost_pass`), so that the
//! measured pass runs without the statistics' overhead, as users' hosts do.

use super::*;

/// Cumulative kernel cost of one group of BPF programs.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct ProgCost {
    pub(super) programs: u32,
    pub(super) run_time_ns: u64,
    pub(super) run_cnt: u64,
}

impl ProgCost {
    pub(super) fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
    pub(super) fn add(&mut self, o: &ProgCost) {
        self.programs += o.programs;
        self.run_time_ns += o.run_time_ns;
        self.run_cnt += o.run_cnt;
    }
}

/// The BPF statistics of a flowtrace under the same load, with `kernel.bpf_stats_enabled=1`.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct CostPass {
    pub(super) seconds: u32,
    /// Packets counted by the kernel where the per-packet figures are taken (see
    /// `TracerFigures::veth_packets`) during this pass.
    pub(super) packets: u64,
    /// This pass's programs: tc_ingress, tc_egress, nf_slot (0..7 together), kfree_skb_btf,
    /// consume_skb_btf.
    pub(super) bpf: BTreeMap<String, ProgCost>,
}

/// How long the pass that measures the BPF programs' cost runs its load.
pub(super) const COST_SECONDS: u32 = 3;

/// `kernel.bpf_stats_enabled=1` for the run; the old value comes back on drop.
pub(super) struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        let old = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.old) {
            crate::err!("bench: could not restore {BPF_STATS}={}: {e}", self.old);
        }
    }
}

pub(super) fn prog_group(name: &str) -> Option<&'static str> {
    match name {
        "tc_ingress" => Some("tc_ingress"),
        "tc_egress" => Some("tc_egress"),
        // Whichever form of the tracepoint this kernel took: the free is in the sum either way.
        "kfree_skb_btf" | "kfree_skb_raw" => Some("kfree_skb_btf"),
        "consume_skb_btf" | "consume_skb_btf_old" | "consume_skb_raw" | "consume_skb_raw_old" => {
            Some("consume_skb_btf")
        }
        n if n.starts_with("nf_slot") => Some("nf_slot"),
        _ => None,
    }
}

pub(super) fn bpf_progs() -> Result<Vec<Value>> {
    let out = cmd("bpftool", ["-j", "prog", "show"]).read()?;
    serde_json::from_str(&out).context("parsing `bpftool -j prog show`")
}

/// Ids of flowtrace-named programs already loaded (by another tracer), to leave out.
pub(super) fn existing_prog_ids() -> Result<BTreeSet<u64>> {
    Ok(bpf_progs()?
        .iter()
        .filter(|p| p["name"].as_str().and_then(prog_group).is_some())
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

/// run_time_ns/run_cnt of this run's flowtrace programs, summed per group: programs matched by
/// name, minus those that were loaded before this flowtrace started (bpftool 7.1 here does not
/// say which process holds a program).
pub(super) fn bpf_costs(before: &BTreeSet<u64>) -> Result<BTreeMap<String, ProgCost>> {
    let mut groups: BTreeMap<String, ProgCost> = BTreeMap::new();
    for p in &bpf_progs()? {
        let Some(group) = p["name"].as_str().and_then(prog_group) else {
            continue;
        };
        if p["id"].as_u64().is_some_and(|id| before.contains(&id)) {
            continue;
        }
        let g = groups.entry(group.to_owned()).or_default();
        g.programs += 1;
        g.run_time_ns += p["run_time_ns"].as_u64().unwrap_or(0);
        g.run_cnt += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(groups)
}

/// The kernel cost of the configuration's BPF programs, in a pass of its own: a new flowtrace
/// under `COST_SECONDS` of the same load with `kernel.bpf_stats_enabled=1`. The measured pass
/// runs with it off, as users' hosts do: the statistics cost two clock reads a program run
/// (about 40 ns here, ×10 runs a forwarded packet), which tcpdump and the baseline never pay.
pub(super) fn cost_pass(ctx: &Ctx, config: Config, load: Load) -> Result<CostPass> {
    let before = existing_prog_ids()?;
    let (tracer, file) = spawn_tracer(ctx, config, load)?;
    let Some(mut t) = tracer else {
        bail!("no tracer to measure");
    };
    t.wait_ready(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    let stats = BpfStats::enable()?;
    run_load(load, COST_SECONDS)?;
    std::thread::sleep(DRAIN);
    let bpf = bpf_costs(&before)?;
    drop(stats);
    let done = t.finish(Some(libc::SIGINT), Duration::from_secs(20))?;
    drop(file);
    let mut f = TracerFigures::default();
    read_flowtrace_summary(&done, config, counted_at(ctx, load), &mut f)?;
    Ok(CostPass {
        seconds: COST_SECONDS,
        packets: f.veth_packets,
        bpf,
    })
}

#[cfg(test)]
mod tests {
    use super::prog_group;

    #[test]
    fn every_form_of_the_free_is_in_the_sum() {
        for name in [
            "consume_skb_btf",
            "consume_skb_btf_old",
            "consume_skb_raw",
            "consume_skb_raw_old",
        ] {
            assert_eq!(prog_group(name), Some("consume_skb_btf"), "{name}");
        }
        assert_eq!(prog_group("kfree_skb_raw"), Some("kfree_skb_btf"));
        assert_eq!(prog_group("nf_slot4"), Some("nf_slot"));
        assert_eq!(prog_group("probe_fexit"), None);
    }
}

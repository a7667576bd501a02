//! Everything one session attaches to the kernel, in one bundle that detaches it all when
//! dropped: the eBPF object (its programs and links), the netfilter observers, the filter
//! expression's programs, the maps user space reads and writes, and the tc filters and
//! qdiscs the ledger owns.

use tracer_common::{Direction, Offsets, PointKey, MAX_SNAP};

use super::setup::{attach_netfilter_and_drops, Startup};
use crate::{
    allocator::release_freed,
    cli::TraceArgs,
    error::Result,
    events::ringbuf::EventStream,
    pcapfilter::{kernel::KernelFilter, CompiledFilter},
    probe::{
        btf, counters::Counters, loader, netfilter::NetfilterObservers, offsets, scope::ScopeMaps,
        tables::Tables, tc, tc_ledger,
    },
    target::{ruleset::Ruleset, scope::Scope, topology::AttachPoint},
};

/// Fields drop in this order: the programs first, then the tc filters and qdiscs.
pub(super) struct Kernel {
    pub ebpf: aya::Ebpf,
    pub ledger: tc_ledger::Ledger,
    pub stream: EventStream,
    _filter: Option<KernelFilter>,
    pub scope_maps: ScopeMaps,
    pub counters: Counters,
    /// The LRU tables, to tell what the kernel evicted.
    pub tables: Tables,
    _nf: Option<NetfilterObservers>,
    /// Which netfilter slots observe at each hook (bit per slot).
    pub nf_slots: [u8; 5],
    /// What was attached by tc, per point and direction.
    pub attached: Vec<tc::Attached>,
}

/// Struct offsets and drop-reason names from the running kernel's BTF (without BTF, only the
/// tc hops work).
pub(super) fn kernel_facts(notes: &mut Startup) -> (Offsets, Vec<(String, i64)>) {
    let kernel_btf = btf::Btf::from_sys_fs();
    let offsets = match kernel_btf
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|b| offsets::from_btf(b).map_err(|e| e.to_string()))
    {
        Ok(o) => o,
        Err(e) => {
            notes.say(format!(
                "BTF: {e}; netfilter and drop tracing are unavailable (tc hops still work)"
            ));
            Offsets::zeroed()
        }
    };
    if offsets.valid != 0 {
        notes.say(format!(
            "struct offsets from this kernel's BTF: sk_buff.len +{} .data +{} .dev +{} .mark +{}; nf_hook_state.in +{}",
            offsets.skb_len, offsets.skb_data, offsets.skb_dev, offsets.skb_mark, offsets.state_in
        ));
    }
    let reasons = kernel_btf
        .as_ref()
        .ok()
        .and_then(|b| b.enum_values("skb_drop_reason").ok())
        .unwrap_or_default();
    (offsets, reasons)
}

/// What a killed run left (netlink filters, clsact qdiscs): removed before we attach.
pub(super) fn sweep(notes: &mut Startup) {
    for swept in tc_ledger::sweep() {
        notes.say(format!(
            "removed what a killed flowtrace (pid {}) left: {} tc filter(s), {} clsact qdisc(s){}",
            swept.pid,
            swept.filters,
            swept.qdiscs,
            match swept.gone {
                0 => String::new(),
                n => format!(" ({n} already gone)"),
            }
        ));
    }
}

/// Loads and attaches everything, saying what and how; `scope` is what the kernel takes in.
pub(super) fn attach(
    args: &TraceArgs,
    offsets: &Offsets,
    ruleset: Option<&Ruleset>,
    compiled: Option<&CompiledFilter>,
    points: &[AttachPoint],
    scope: Scope,
    notes: &mut Startup,
) -> Result<Kernel> {
    // Owns the netlink filters and the qdiscs we add; removes them, and its file, when dropped.
    let mut ledger = tc_ledger::Ledger::default();
    // 0: the whole packet, as far as one observation can carry.
    let snaplen = match args.snaplen {
        0 => MAX_SNAP as u32 - 1,
        n => n.min(MAX_SNAP as u32 - 1),
    };
    let ring_bytes = args.ring_bytes();
    // Only a recording keeps the bytes past the headers, and only a filter expression (checked
    // again in user space) reads them: otherwise an IPv4 packet's headers are all it sends.
    let headers_only = args.write.is_none() && compiled.is_none();
    let mut ebpf = loader::load(
        offsets,
        snaplen,
        !args.counters,
        ring_bytes,
        compiled.is_some(),
        headers_only,
    )?;
    release_freed();
    // Before any map is taken out of `ebpf`: the netfilter loader relocates against all of them.
    // --counters: no per-packet events, so nothing for the netfilter and drop layers to add.
    let (nf, nf_slots) = if args.counters {
        notes.say(
            "counters only: no per-packet events, netfilter and drop layers not attached".into(),
        );
        (None, [0xff; 5])
    } else {
        let nf = attach_netfilter_and_drops(
            &mut ebpf,
            offsets.valid != 0,
            ruleset,
            args.nf_attach,
            notes,
        );
        release_freed();
        nf
    };
    let mut counters = Counters::take(&mut ebpf, ring_bytes)?;
    register(&mut counters, points)?;
    let tables = Tables::take(&mut ebpf)?;
    // Which packets are the targets': decided in the kernel, before the ring buffer.
    let mut scope_maps = ScopeMaps::take(&mut ebpf)?;
    scope_maps.set(scope)?;
    if !args.counters {
        notes.say(scope_maps.current().describe());
    }
    let stream = EventStream::take(&mut ebpf)?;
    let filter = match compiled {
        Some(f) => {
            let k = crate::pcapfilter::kernel::install(&mut ebpf, f)?;
            notes.say(format!(
                "filter `{}`: libpcap's {} classic BPF instructions run as {} eBPF instructions in the tc programs, before the ring buffer; a matching packet is followed across NAT, and so is its reply from before de-NAT",
                f.expr,
                f.classic.len(),
                k.instructions
            ));
            Some(k)
        }
        None => None,
    };
    let attached = tc::attach(&mut ebpf, points, args.tc_attach, &mut ledger)?;
    for a in attached
        .iter()
        .filter(|a| a.direction == Direction::Ingress)
    {
        notes.say(format!(
            "attached tc ingress+egress on {} ({}, ifindex {}) via {}",
            a.point.name, a.point.role, a.point.ifindex, a.mechanism
        ));
    }
    Ok(Kernel {
        ebpf,
        ledger,
        stream,
        _filter: filter,
        scope_maps,
        counters,
        tables,
        _nf: nf,
        nf_slots,
        attached,
    })
}

/// Counts at these points, both ways.
pub(super) fn register(counters: &mut Counters, points: &[AttachPoint]) -> Result<()> {
    for p in points {
        for d in [Direction::Ingress, Direction::Egress] {
            counters.register(PointKey::new(p.ifindex, d as u8))?;
        }
    }
    Ok(())
}

impl Kernel {
    /// Points that are gone (a restarted container's old veths): their counter entries are
    /// freed (their counts are kept).
    pub(super) fn forget(&mut self, points: &[AttachPoint]) {
        for p in points {
            for d in [Direction::Ingress, Direction::Egress] {
                self.counters.unregister(PointKey::new(p.ifindex, d as u8));
            }
        }
    }

    /// Attaches tc at new points (a container restarted), counting there too.
    pub(super) fn attach_more(&mut self, args: &TraceArgs, points: &[AttachPoint]) -> Result<()> {
        tc::attach(&mut self.ebpf, points, args.tc_attach, &mut self.ledger)?;
        register(&mut self.counters, points)
    }
}

//! Setting a session up: discovering the targets, attaching the netfilter and drop layers,
//! and the small pieces of text that describe what was found (start-up lines, the dashboard's
//! title, the recording's section comment, the headless progress line).

use std::{collections::BTreeSet, time::Duration};

use tracer_common::Direction;

use crate::{
    cli::{NfAttach, TraceArgs},
    correlate::{
        explain::Explainer,
        packet::{PointInfo, Points},
    },
    error::{Error, Result},
    pipeline::Pipeline,
    probe::{capabilities, drops, kallsyms::Kallsyms, loader, netfilter, nf_hook, tc},
    target::{
        docker::Docker,
        netns::Netns,
        ruleset::Ruleset,
        topology::{bare_netns_path, container_path, AttachPoint, HostView, Topology},
    },
};

/// `flowtrace: 15s, 1234 packets, 2 dropped, 0 events lost, trace.pcapng 1.2 MiB`
pub(super) fn progress(p: &Pipeline, lost: u64, elapsed: Duration) -> String {
    let file = p
        .recording()
        .map(|(path, bytes)| format!(", {path} {:.1} MiB", bytes as f64 / 1_048_576.0))
        .unwrap_or_default();
    format!(
        "flowtrace: {}s, {} packets, {} dropped, {lost} events lost{file}",
        elapsed.as_secs(),
        p.shown,
        p.drops
    )
}

/// The dashboard's title: what is traced.
pub(super) fn title(topo: &Topology) -> String {
    let who: Vec<String> = topo
        .containers
        .iter()
        .map(|c| {
            let nets: Vec<String> = c
                .info
                .endpoints
                .iter()
                .map(|e| match e.ip {
                    Some(ip) => format!("{ip} on {}", e.network),
                    None => e.network.clone(),
                })
                .collect();
            format!("{} ({})", c.info.name, nets.join(", "))
        })
        .collect();
    if who.is_empty() {
        let ifaces: Vec<&str> = topo.named.iter().map(|l| l.name.as_str()).collect();
        format!("flowtrace — {}", ifaces.join(", "))
    } else {
        format!("flowtrace — {}", who.join("; "))
    }
}

/// The recording's section comment: what was traced, where, how (also as JSON).
pub(super) fn section_comment(topo: &Topology, attached: &[tc::Attached]) -> String {
    let mut lines = vec![format!("flowtrace {} recording", env!("CARGO_PKG_VERSION"))];
    lines.extend(topo.describe());
    let containers: Vec<serde_json::Value> = topo
        .containers
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.info.name, "id": c.info.id, "image": c.info.image, "pid": c.info.pid,
                "netns": c.netns.inode,
                "networks": c.info.endpoints.iter().map(|e| serde_json::json!({
                    "network": e.network, "ip": e.ip.map(|i| i.to_string()),
                    "prefix_len": e.prefix_len, "gateway": e.gateway.map(|g| g.to_string()), "mac": e.mac,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let points: Vec<serde_json::Value> = attached
        .iter()
        .filter(|a| a.direction == Direction::Ingress)
        .map(|a| serde_json::json!({"iface": a.point.name, "ifindex": a.point.ifindex, "role": a.point.role.to_string(), "mechanism": a.mechanism.to_string()}))
        .collect();
    lines.push(format!(
        "flowtrace-meta: {}",
        serde_json::json!({"containers": containers, "points": points})
    ));
    lines.join("\n")
}

/// Finds the containers, their veths and bridges, and the uplinks.
pub(super) async fn discover(args: &TraceArgs) -> Result<(Topology, Option<Docker>)> {
    let mut host = HostView::read()?;
    let mut topo = Topology::default();
    let mut client = None;
    for name in &args.ifaces {
        let link = host
            .by_name(name)
            .ok_or_else(|| Error::UnknownInterface(name.clone()))?;
        topo.named.push(link.clone());
    }
    for path in &args.netns {
        topo.containers.push(bare_netns_path(path, &host)?);
    }
    if !args.netns.is_empty() && args.containers.is_empty() && args.networks.is_empty() {
        add_ports_and_uplinks(&mut topo, &host, args.no_uplinks);
    }
    if !args.containers.is_empty() || !args.networks.is_empty() {
        let docker = Docker::connect().await?;
        let mut wanted: Vec<String> = args.containers.clone();
        for net in &args.networks {
            wanted.extend(docker.network_containers(net).await?);
        }
        let mut seen = BTreeSet::new();
        for name in wanted {
            let info = match docker.container(&name).await {
                Err(Error::ContainerNotRunning(_)) => {
                    let info = super::churn::wait_for_start(&docker, &name).await?;
                    // A container that just started has interfaces the earlier view lacks.
                    host = HostView::read()?;
                    info
                }
                other => other?,
            };
            if seen.insert(info.id.clone()) {
                topo.containers.push(container_path(info, &host)?);
            }
        }
        add_ports_and_uplinks(&mut topo, &host, args.no_uplinks);
        client = Some(docker);
    }
    Ok((topo, client))
}

/// The other ports of the traced bridges, and the uplinks from the routing table.
fn add_ports_and_uplinks(topo: &mut Topology, host: &HostView, no_uplinks: bool) {
    let traced: Vec<u32> = topo
        .containers
        .iter()
        .flat_map(|c| c.links.iter().map(|l| l.host_veth.index))
        .collect();
    let bridges: BTreeSet<u32> = topo
        .containers
        .iter()
        .flat_map(|c| {
            c.links
                .iter()
                .filter_map(|l| l.bridge.as_ref().map(|b| b.index))
        })
        .collect();
    for b in bridges {
        topo.ports.extend(host.bridge_ports(b, &traced));
    }
    if !no_uplinks {
        topo.uplinks = host.uplinks();
    }
}

pub(super) use crate::events::clock::monotonic_ns;

pub(super) fn points_of(attach: &[AttachPoint]) -> Points {
    attach
        .iter()
        .map(|p| {
            (
                p.ifindex,
                PointInfo {
                    name: p.name.as_str().into(),
                    role: p.role,
                    container: p.container.as_deref().map(Into::into),
                    veth: p.veth,
                },
            )
        })
        .collect()
}

/// The start-up lines (what was found, attached, or unavailable): printed on stderr as they
/// come, and kept for the dashboard's status area.
#[derive(Default)]
pub(super) struct Startup(pub(super) Vec<String>);

impl Startup {
    pub(super) fn say(&mut self, mut line: String) {
        // Names from Docker and the kernel: shown, never obeyed by the terminal.
        crate::output::terminal::clean(&mut line);
        crate::logging::note(&line);
        eprintln!("{line}");
        self.0.push(line);
    }
}

/// Attaches the drop tracepoints and the netfilter observers, saying what worked; tracing
/// goes on with whatever is available.
pub(super) fn attach_netfilter_and_drops(
    ebpf: &mut aya::Ebpf,
    have_offsets: bool,
    ruleset: Option<&Ruleset>,
    mode: NfAttach,
    notes: &mut Startup,
) -> (Option<netfilter::NetfilterObservers>, [u8; 5]) {
    // Which slots observe at each hook; every one where nothing does (nothing is reported).
    let mut linked = [0xff; 5];
    if !have_offsets {
        return (None, linked);
    }
    let btf = aya::Btf::from_sys_fs().ok();
    notes.say(capabilities::describe(&capabilities::probe(
        ebpf,
        btf.as_ref(),
    )));
    for tp in ["kfree_skb", "consume_skb"] {
        match drops::attach(ebpf, btf.as_ref(), tp) {
            Ok(m) => notes.say(format!("attached {tp} via {m}")),
            Err(e) => notes.say(format!(
                "not attached: {tp} ({e}); drops will not be reported"
            )),
        }
    }
    let mut why = Vec::new();
    if matches!(mode, NfAttach::Auto | NfAttach::Links) {
        let (plan, around) = netfilter_plan(ruleset);
        match netfilter::attach(ebpf, loader::object(), &plan) {
            Ok(nf) => {
                notes.say(format!(
                    "attached netfilter observers via BPF netfilter links ({} links around {around})",
                    nf.links,
                ));
                return (Some(nf), plan);
            }
            Err(e) => why.push(format!("BPF netfilter links: {e}")),
        }
    }
    if mode != NfAttach::Links {
        match nf_hook::attach(ebpf, btf.as_ref(), mode) {
            Ok(m) => {
                notes.say(format!(
                    "attached netfilter observers via {m}: hook level (which hooks, NAT per \
                     hook; a drop's table and rule from the ruleset's counters){}",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", why.join("; "))
                    }
                ));
                // A hook's entry (slot 0) and its exit once every table accepted.
                linked = [1 | 1 << tracer_common::netfilter::LAST_SLOT; 5];
                return (None, linked);
            }
            Err(e) => why.push(e),
        }
    }
    notes.say(format!(
        "not attached: netfilter observers ({}); hooks and tables will not be shown",
        why.join("; ")
    ));
    (None, linked)
}

/// Which netfilter slots to link at each IPv4 hook: around the tables the ruleset has there
/// (every slot everywhere when the ruleset cannot be read), and a description of it.
pub(super) fn netfilter_plan(ruleset: Option<&Ruleset>) -> ([u8; 5], String) {
    use tracer_common::netfilter::{slots_at, HOOK_NAMES};
    let Some(rs) = ruleset else {
        return (
            [0xff; 5],
            "every table position (the ruleset could not be read)".into(),
        );
    };
    let mut plan = [0u8; 5];
    let mut parts = Vec::new();
    for (hook, name) in HOOK_NAMES.iter().enumerate() {
        let tables = rs.tables_at(hook as u8);
        let prios: Vec<i32> = tables.iter().map(|(_, p)| *p).collect();
        plan[hook] = slots_at(hook as u8, &prios);
        let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
        parts.push(match names.is_empty() {
            true => format!("{name} (entry only)"),
            false => format!("{name} {}", names.join(",")),
        });
    }
    (plan, parts.join("; "))
}

/// What the explainer needs from this host.
pub(super) fn explainer(
    topo: &Topology,
    reasons: Vec<(String, i64)>,
    ruleset: Option<Ruleset>,
    read_ns: u64,
) -> Explainer {
    let kallsyms = Kallsyms::load();
    let mut ex = Explainer::empty();
    ex.reasons = reasons
        .into_iter()
        .filter_map(|(n, v)| u32::try_from(v).ok().map(|v| (v, n)))
        .collect();
    ex.symbol = Box::new(move |addr| kallsyms.function(addr).map(str::to_owned));
    ex.netns_names = topo
        .containers
        .iter()
        .map(|c| (c.netns.inode as u32, c.info.name.clone()))
        .collect();
    ex.host_netns = Netns::open(std::path::Path::new("/proc/self/ns/net"))
        .map(|n| n.inode as u32)
        .unwrap_or(0);
    if let Some(rs) = ruleset {
        ex.set_ruleset(rs);
    }
    ex.read_ns = read_ns;
    match crate::target::ruleset_reads::Background::spawn(Ruleset::read) {
        Ok(b) => ex.reads = Box::new(b),
        Err(e) => log::warn!("no thread to read the ruleset's counters ({e}): drops go unnamed"),
    }
    ex
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str =
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
        [3:180] -A POSTROUTING -s 172.18.0.0/16 ! -o br-x -j MASQUERADE\nCOMMIT\n\
        *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        [0:0] -A FORWARD -j DOCKER-USER\nCOMMIT\n";

    #[test]
    fn netfilter_observers_go_around_the_tables_the_ruleset_has() {
        let rs = Ruleset::parse(DOCKER, "iptables-save");
        let (plan, around) = netfilter_plan(Some(&rs));
        // PREROUTING: entry, after nat (-100).
        assert_eq!(plan[0], 0b0001_0001);
        // INPUT: entry, after filter, after nat (+100).
        assert_eq!(plan[1], 0b1010_0001);
        // FORWARD: entry (POSTROUTING's entry is its exit).
        assert_eq!(plan[2], 0b0000_0001);
        // OUTPUT: entry, after nat (-100) (POSTROUTING's entry is its exit).
        assert_eq!(plan[3], 0b0001_0001);
        // POSTROUTING: entry, after nat (+100).
        assert_eq!(plan[4], 0b1000_0001);
        assert_eq!(
            around,
            "PREROUTING nat; INPUT filter,nat; FORWARD filter; OUTPUT nat,filter; POSTROUTING nat"
        );
        let links: u32 = plan.iter().map(|m| m.count_ones()).sum();
        assert_eq!(links, 10, "instead of 40");
        // No ruleset: every slot at every hook.
        assert_eq!(netfilter_plan(None).0, [0xff; 5]);
    }
}

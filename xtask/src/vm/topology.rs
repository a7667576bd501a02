//! The guest's topology, shaped like a Docker host, and what the run must show there.
//!
//! The guest's own namespace plays the host: a bridge `br-ft` (172.18.0.1/16) with the
//! "container" namespace's veth on it (172.18.0.2), an uplink veth `up0` (198.51.100.1/24) to
//! an "internet" namespace (198.51.100.2) as the default route, forwarding on, and the
//! iptables rules Docker writes for a user network with a published port: FORWARD policy
//! DROP, DOCKER-USER (with a deliberate drop of TCP to 7777), DOCKER-ISOLATION, conntrack
//! accept, MASQUERADE, and a DNAT of port 8080 to the container's port 80. flowtrace traces
//! the container's namespace with `--netns` (Docker is not needed) and must show what the lab
//! tests check on the Docker host:
//! - container → internet TCP: veth ingress, bridge ingress, uplink egress, in that order,
//!   MASQUERADE'd to the uplink's address at POSTROUTING/nat; the SYN-ACK arrives for that
//!   address at the uplink and is de-NATed at PREROUTING/nat before the bridge and the veth;
//! - internet → the published port: DNAT at PREROUTING/nat to 172.18.0.2:80, FORWARD/filter
//!   accepts it, out by the bridge and the veth;
//! - the DOCKER-USER drop: FORWARD/filter, NETFILTER_DROP, the rule as iptables -S prints it;
//! - a filter expression (`tcp port 9000`) keeps that flow's hops and nothing else;
//! - nothing left attached afterwards.
//!
//! With `--kernel host` the same script runs on this machine's kernel inside a throwaway
//! namespace that plays the host (no link to the real one).

use anyhow::{bail, Context, Result};
use tracer_model::Packet;

use crate::expect::{self, HostPath};

use super::Outcome;

/// The guest script. `$IP`, `$FT`, `$NC`, `$P` (a prefix for namespace names), `$OUT` (a
/// writable directory) and `$NF` (the --nf-attach mode) come from the caller.
pub const TEST: &str = r#"set -u
NS="$IP netns exec"
$IP netns add ${P}ctr; $IP netns add ${P}inet
$IP link add br-ft type bridge; $IP addr add 172.18.0.1/16 dev br-ft; $IP link set br-ft up
$IP link add vethc type veth peer name eth0 netns ${P}ctr
$IP link set vethc master br-ft; $IP link set vethc up
$IP -n ${P}ctr addr add 172.18.0.2/16 dev eth0
$IP -n ${P}ctr link set eth0 up; $IP -n ${P}ctr link set lo up
$IP -n ${P}ctr route add default via 172.18.0.1
$IP link add up0 type veth peer name up1 netns ${P}inet
$IP addr add 198.51.100.1/24 dev up0; $IP link set up0 up; $IP link set lo up
$IP -n ${P}inet addr add 198.51.100.2/24 dev up1
$IP -n ${P}inet link set up1 up; $IP -n ${P}inet link set lo up
$IP route add default via 198.51.100.2 dev up0
echo 1 > /proc/sys/net/ipv4/ip_forward
T=/usr/sbin/iptables
$T -P FORWARD DROP
$T -N DOCKER; $T -N DOCKER-USER; $T -N DOCKER-ISOLATION-STAGE-1; $T -N DOCKER-ISOLATION-STAGE-2
$T -A FORWARD -j DOCKER-USER
$T -A FORWARD -j DOCKER-ISOLATION-STAGE-1
$T -A FORWARD -o br-ft -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
$T -A FORWARD -o br-ft -j DOCKER
$T -A FORWARD -i br-ft ! -o br-ft -j ACCEPT
$T -A FORWARD -i br-ft -o br-ft -j ACCEPT
$T -A DOCKER -d 172.18.0.2/32 ! -i br-ft -o br-ft -p tcp -m tcp --dport 80 -j ACCEPT
$T -A DOCKER-ISOLATION-STAGE-1 -i br-ft ! -o br-ft -j DOCKER-ISOLATION-STAGE-2
$T -A DOCKER-ISOLATION-STAGE-1 -j RETURN
$T -A DOCKER-ISOLATION-STAGE-2 -o br-other -j DROP
$T -A DOCKER-ISOLATION-STAGE-2 -j RETURN
$T -A DOCKER-USER -p tcp -m tcp --dport 7777 -j DROP
$T -A DOCKER-USER -j RETURN
$T -t nat -N DOCKER
$T -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
$T -t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
$T -t nat -A POSTROUTING -s 172.18.0.0/16 ! -o br-ft -j MASQUERADE
$T -t nat -A DOCKER -i br-ft -j RETURN
$T -t nat -A DOCKER ! -i br-ft -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:80
$NS ${P}ctr sh -c "$NC -ll -p 80 -e cat >/dev/null 2>&1 &"
$NS ${P}inet sh -c "$NC -ll -p 9000 -e cat >/dev/null 2>&1 &"
traced() {
  i=0; while ! grep -q "tracing" $OUT/err-$1.txt && kill -0 $2 2>/dev/null && [ $i -lt 90 ]; do sleep 1; i=$((i+1)); done
}
stop() {
  kill -INT $1; i=0; while kill -0 $1 2>/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
}
$FT --netns /run/netns/${P}ctr --json --duration 120s --nf-attach $NF >$OUT/out-all.json 2>$OUT/err-all.txt &
A=$!
$FT --netns /run/netns/${P}ctr --json --duration 120s --nf-attach $NF tcp port 9000 >$OUT/out-filter.json 2>$OUT/err-filter.txt &
F=$!
traced all $A; traced filter $F
$NS ${P}ctr sh -c "echo hello | $NC -w 3 198.51.100.2 9000" >/dev/null 2>&1
$NS ${P}inet sh -c "echo hello | $NC -w 3 198.51.100.1 8080" >/dev/null 2>&1
$NS ${P}ctr sh -c "echo x | $NC -w 2 198.51.100.2 7777" >/dev/null 2>&1
sleep 2
stop $A; stop $F
echo "vm: --- stderr"; cat $OUT/err-all.txt
echo "vm: --- stdout"; cat $OUT/out-all.json
echo "vm: --- filtered"; cat $OUT/out-filter.json
echo "vm: --- filter-stderr"; cat $OUT/err-filter.txt
echo "vm: --- leftovers"
for d in vethc br-ft up0; do for w in ingress egress; do /usr/sbin/tc filter show dev $d $w; done; done
echo "vm: --- end"
"#;

/// The guest's host, as the shared expectations name it.
fn host() -> HostPath {
    HostPath {
        veth: "vethc".into(),
        bridge: "br-ft".into(),
        uplink: "up0".into(),
        uplink_ip: "198.51.100.1".into(),
    }
}

fn port_of(addr: Option<&str>) -> &str {
    addr.and_then(|a| a.rsplit(':').next()).unwrap_or_default()
}

/// The lab's assertions (the same functions `tracer/tests/lab.rs` calls), on the guest's
/// packets.
pub fn check_docker_host(o: &Outcome) -> Result<()> {
    if !o.unreadable.is_empty() {
        bail!("lines outside the contract:\n{}", o.unreadable.join("\n"));
    }
    let find = |what: &str, pred: &dyn Fn(&Packet) -> bool| -> Result<&Packet> {
        o.packets
            .iter()
            .find(|p| pred(p))
            .with_context(|| format!("no {what} among {} packets", o.packets.len()))
    };
    fn is<S: std::ops::Deref<Target = str>>(v: &Option<S>, want: &str) -> bool {
        v.as_deref() == Some(want)
    }
    let h = host();
    // Container → internet, MASQUERADE'd, and the reply de-NATed.
    let syn = find("SYN from 172.18.0.2 to :9000", &|p| {
        p.src
            .as_deref()
            .is_some_and(|s| s.starts_with("172.18.0.2:"))
            && is(&p.dst, "198.51.100.2:9000")
            && is(&p.tcp_flags, "S")
    })?;
    h.masqueraded_out(syn).map_err(anyhow::Error::msg)?;
    let local = format!("172.18.0.2:{}", port_of(syn.src.as_deref()));
    let synack = find("SYN-ACK to the container", &|p| {
        is(&p.dst, &local) && is(&p.tcp_flags, "S.")
    })?;
    h.denatted_reply(synack, &local)
        .map_err(anyhow::Error::msg)?;
    // Internet → the published port.
    let inbound = find("SYN to the published port", &|p| {
        p.src
            .as_deref()
            .is_some_and(|s| s.starts_with("198.51.100.2:"))
            && is(&p.dst, "172.18.0.2:80")
            && is(&p.tcp_flags, "S")
    })?;
    h.published_in(inbound, "198.51.100.1:8080", "172.18.0.2:80")
        .map_err(anyhow::Error::msg)?;
    // The DOCKER-USER drop.
    let dropped = find("dropped SYN to :7777", &|p| {
        is(&p.dst, "198.51.100.2:7777") && p.drop.is_some()
    })?;
    let rule = "-A DOCKER-USER -p tcp -m tcp --dport 7777 -j DROP";
    expect::dropped_by_rule(dropped, "FORWARD", "filter", rule).map_err(anyhow::Error::msg)?;
    // The filtered run, beside the other: netfilter too (a second priority), that TCP flow,
    // every hop, nothing else.
    let ferr = o.filter_stderr.join("\n");
    if !ferr.contains("attached netfilter observers via")
        || !ferr.contains("filter `tcp port 9000`")
    {
        bail!("the second flowtrace lacks netfilter or its filter:\n{ferr}");
    }
    let on_9000 =
        |p: &Packet| port_of(p.src.as_deref()) == "9000" || port_of(p.dst.as_deref()) == "9000";
    if o.filtered.is_empty() || !o.filtered.iter().all(on_9000) {
        bail!(
            "`tcp port 9000` showed {} packets, not only that flow: {:?}",
            o.filtered.len(),
            o.filtered
        );
    }
    let fsyn = o
        .filtered
        .iter()
        .find(|p| is(&p.tcp_flags, "S"))
        .context("filtered: no SYN")?;
    if expect::hops(fsyn) != h.out() {
        bail!("filtered: the SYN's path is {:?}", expect::hops(fsyn));
    }
    if !o.leftovers.is_empty() {
        bail!("left attached after exit:\n{}", o.leftovers.join("\n"));
    }
    Ok(())
}

//! Could this iptables rule have matched this packet? When a drop is named from rule
//! counters (iptables-legacy, or no nftrace), the rules whose counters moved are only
//! candidates: a busy host's other drops move counters too. A candidate is kept only if it is
//! reachable from the drop's hook (`reachable`) and its matches fit the packet as netfilter
//! saw it there (`fits`); a match this module does not know is "cannot tell", never "no".

use std::{
    collections::{BTreeSet, VecDeque},
    net::IpAddr,
};

/// The packet at the drop, as the rule saw it. Unknown interfaces are `None`.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// IP protocol number.
    pub proto: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub iif: Option<String>,
    pub oif: Option<String>,
}

/// Whether a rule's matches fit a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    Yes,
    No,
    /// A match this module cannot check (conntrack state, marks, sets…), none failing.
    CannotTell,
}

/// `iptables -S` words, with `"…"` kept as one (comments may hold spaces).
fn words(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `a.b.c.d[/len|/mask]` holds `ip`?
fn in_net(spec: &str, ip: IpAddr) -> Option<bool> {
    let (addr, len) = spec.split_once('/').unwrap_or((spec, ""));
    let addr: IpAddr = addr.parse().ok()?;
    let bits = |a: IpAddr| -> u128 {
        match a {
            IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            IpAddr::V6(v) => u128::from(v),
        }
    };
    if addr.is_ipv4() != ip.is_ipv4() {
        return Some(false);
    }
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        "" => width,
        l => match l.parse::<u32>() {
            Ok(n) => n.min(width),
            // A dotted mask: its ones.
            Err(_) => l.parse::<std::net::Ipv4Addr>().ok()?.to_bits().count_ones(),
        },
    };
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    Some(bits(addr) & mask == bits(ip) & mask)
}

/// `eth0`, or `br-+` (a prefix), holds `name`?
fn iface_fits(spec: &str, name: &str) -> bool {
    match spec.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => spec == name,
    }
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "ipv6-icmp" | "icmpv6" => Some(58),
        "sctp" => Some(132),
        "udplite" => Some(136),
        "gre" => Some(47),
        "esp" => Some(50),
        n => n.parse().ok(),
    }
}

/// `80`, `1000:2000` or (multiport) `80,443,8000:8080` holds `port`?
fn port_fits(spec: &str, port: u16) -> Option<bool> {
    let mut any = false;
    for part in spec.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let lo: u16 = if a.is_empty() { 0 } else { a.parse().ok()? };
        let hi: u16 = if b.is_empty() {
            u16::MAX
        } else {
            b.parse().ok()?
        };
        any |= (lo..=hi).contains(&port);
    }
    Some(any)
}

/// One match against the packet: `Some(true/false)` when it can be checked, `None` when not.
fn check(opt: &str, arg: &str, seen: &Seen) -> Option<bool> {
    match opt {
        "-s" | "--source" => in_net(arg, seen.src?),
        "-d" | "--destination" => in_net(arg, seen.dst?),
        "-p" | "--protocol" if arg == "all" => Some(true),
        "-p" | "--protocol" => Some(proto_number(arg)? == seen.proto?),
        "-i" | "--in-interface" => Some(iface_fits(arg, seen.iif.as_deref()?)),
        "-o" | "--out-interface" => Some(iface_fits(arg, seen.oif.as_deref()?)),
        "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
            port_fits(arg, seen.dport?)
        }
        "--sport" | "--source-port" | "--sports" | "--source-ports" => port_fits(arg, seen.sport?),
        _ => None,
    }
}

/// Do the matches of `rule` (`-A CHAIN …`, as `iptables -S` prints it) fit the packet?
pub fn fits(rule: &str, seen: &Seen) -> Fit {
    let w = words(rule);
    let mut unknown = false;
    let mut i = 2; // past "-A CHAIN"
    while i < w.len() {
        let negated = w[i] == "!";
        if negated {
            i += 1;
        }
        let Some(opt) = w.get(i) else { break };
        if opt == "-j" || opt == "-g" || opt == "--jump" || opt == "--goto" {
            break;
        }
        // An option's arguments: the words up to the next option (or `!`).
        let mut args = Vec::new();
        while let Some(a) = w.get(i + 1).filter(|a| !a.starts_with('-') && *a != "!") {
            args.push(a.as_str());
            i += 1;
        }
        i += 1;
        match opt.as_str() {
            "-m" | "--match" | "--comment" => {}
            _ => match args.first().and_then(|a| check(opt, a, seen)) {
                Some(ok) if ok == negated => return Fit::No,
                Some(_) => {}
                None => unknown = true,
            },
        }
    }
    if unknown {
        Fit::CannotTell
    } else {
        Fit::Yes
    }
}

/// The chain a rule is in (`-A CHAIN …`) and the chain it jumps or goes to, if any.
fn chain_and_jump(rule: &str) -> Option<(&str, Option<&str>)> {
    let mut it = rule.split_whitespace();
    if it.next()? != "-A" {
        return None;
    }
    let chain = it.next()?;
    let mut jump = None;
    while let Some(w) = it.next() {
        if matches!(w, "-j" | "-g" | "--jump" | "--goto") {
            jump = it.next();
        }
    }
    Some((chain, jump))
}

/// The chains a packet at the built-in chain `base` can reach, `base` included, following
/// `-j`/`-g` to user chains of the same table (`rules`, every `-A …` of it).
pub fn reachable<'a>(rules: impl Iterator<Item = &'a str> + Clone, base: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::from([base.to_owned()]);
    let mut todo = VecDeque::from([base.to_owned()]);
    while let Some(chain) = todo.pop_front() {
        for (from, to) in rules.clone().filter_map(chain_and_jump) {
            if let (true, Some(to)) = (from == chain, to) {
                let is_chain = rules
                    .clone()
                    .filter_map(chain_and_jump)
                    .any(|(c, _)| c == to);
                if is_chain && seen.insert(to.to_owned()) {
                    todo.push_back(to.to_owned());
                }
            }
        }
    }
    seen
}

/// The chain of a `-A CHAIN …` rule.
pub fn chain_of(rule: &str) -> Option<&str> {
    chain_and_jump(rule).map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container_syn() -> Seen {
        Seen {
            src: "172.18.0.2".parse().ok(),
            dst: "198.51.100.2".parse().ok(),
            proto: Some(6),
            sport: Some(41234),
            dport: Some(8081),
            iif: Some("br-7544f7b78348".into()),
            oif: Some("ftlab-up".into()),
        }
    }

    #[test]
    fn addresses_protocols_ports_and_interfaces_are_checked() {
        let s = container_syn();
        let f = |r: &str| fits(r, &s);
        assert_eq!(
            f("-A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j DROP"),
            Fit::Yes
        );
        assert_eq!(f("-A DOCKER-USER -d 198.51.100.0/24 -j DROP"), Fit::Yes);
        assert_eq!(
            f("-A DOCKER-USER -d 198.51.101.0/255.255.255.0 -j DROP"),
            Fit::No
        );
        assert_eq!(
            f("-A INPUT -i ftlab-up -p tcp -m tcp --dport 7999 -j DROP"),
            Fit::No
        );
        assert_eq!(f("-A FORWARD -i br-+ -o ftlab-up -j ACCEPT"), Fit::Yes);
        assert_eq!(
            f("-A FORWARD ! -i br-7544f7b78348 -o br-7544f7b78348 -j DROP"),
            Fit::No
        );
        assert_eq!(f("-A X -p udp -j DROP"), Fit::No);
        assert_eq!(
            f("-A X -p tcp -m multiport --dports 80,8000:9000 -j DROP"),
            Fit::Yes
        );
        assert_eq!(f("-A X -p tcp -m tcp ! --dport 8081 -j DROP"), Fit::No);
        assert_eq!(
            f("-A X -s 172.18.0.0/16 ! -d 172.18.0.0/16 -j DROP"),
            Fit::Yes
        );
        assert_eq!(
            f("-A X -m conntrack --ctstate INVALID -j DROP"),
            Fit::CannotTell
        );
        assert_eq!(
            f("-A X -p udp -m conntrack --ctstate INVALID -j DROP"),
            Fit::No,
            "a failing match decides even beside one that cannot be checked"
        );
        assert_eq!(
            f(r#"-A X -m comment --comment "a -d 1.2.3.4 b" -d 198.51.100.2/32 -j DROP"#),
            Fit::Yes
        );
        assert_eq!(f("-A X -s fd00::/8 -j DROP"), Fit::No);
        let unknown_iface = Seen {
            oif: None,
            ..container_syn()
        };
        assert_eq!(
            fits("-A X -o eth9 -j DROP", &unknown_iface),
            Fit::CannotTell
        );
    }

    #[test]
    fn chains_are_reached_through_jumps_only() {
        let rules = [
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -j DOCKER-FORWARD",
            "-A DOCKER-FORWARD -j DOCKER-CT",
            "-A DOCKER-FORWARD -o br-1 -j DOCKER",
            "-A DOCKER-USER -d 198.51.100.2/32 -j DROP",
            "-A DOCKER-CT -o br-1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A DOCKER ! -i br-1 -o br-1 -j DROP",
            "-A INPUT -j IN-LOCAL",
            "-A IN-LOCAL -p tcp --dport 22 -j DROP",
        ];
        let r = reachable(rules.iter().copied(), "FORWARD");
        let want: BTreeSet<String> = [
            "FORWARD",
            "DOCKER-USER",
            "DOCKER-FORWARD",
            "DOCKER-CT",
            "DOCKER",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(r, want);
        assert_eq!(chain_of(rules[8]), Some("IN-LOCAL"));
    }
}

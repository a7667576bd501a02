//! The host's ruleset: which tables run at which hook, and which rule's counters moved, to
//! name the rule that dropped a packet. iptables tables come from `iptables-save -c` and, when
//! legacy tables exist too, `iptables-legacy-save -c` (both backends can be live at once:
//! their tables are merged); plain nftables base chains come from `nft -j list chains`, named
//! by their own table, and their rules with counters from `nft list ruleset`. Chain names are
//! never assumed.

use std::{collections::BTreeMap, process::Command};

use super::{nft, rule_match};

use tracer_common::netfilter::{
    hook_name, hook_of_name as hook_of_chain, table_priority, TABLES as IPTABLES_TABLES,
};

/// A rule or a built-in chain's policy, with its packet counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// `-A CHAIN …` or `-P CHAIN POLICY`, as `iptables -S` prints it.
    pub text: String,
    pub packets: u64,
    /// The rule drops (`-j DROP`/`-j REJECT`) or the policy is DROP.
    pub drops: bool,
    /// What printed it (`iptables-save -c`, `iptables-legacy-save -c`, `nft list ruleset`).
    pub source: &'static str,
}

/// One table: its built-in chains (hooks) and every rule and policy with counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub hooks: Vec<u8>,
    pub entries: Vec<Counted>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: BTreeMap<String, Table>,
    /// Which command produced it (`iptables-save`, `iptables-legacy-save`).
    pub source: String,
    /// nftables base chains of the ip/inet families: (hook, table, priority).
    pub nft_chains: Vec<(u8, String, i32)>,
}

/// Parses `nft -j list chains`: the base chains of the ip and inet families.
pub fn parse_nft_chains(json: &str) -> Vec<(u8, String, i32)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let hooks = ["prerouting", "input", "forward", "output", "postrouting"];
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = item.get("chain")?;
            let family = c["family"].as_str()?;
            if family != "ip" && family != "inet" {
                return None;
            }
            let hook = hooks.iter().position(|h| Some(*h) == c["hook"].as_str())? as u8;
            let prio = i32::try_from(c["prio"].as_i64()?).ok()?;
            Some((hook, c["table"].as_str()?.to_owned(), prio))
        })
        .collect()
}

fn counters(s: &str) -> Option<u64> {
    // "[12:3456]"
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.split(':').next()?.parse().ok()
}

impl Ruleset {
    /// Parses `iptables-save -c` output.
    pub fn parse(text: &str, source: &'static str) -> Self {
        let mut rs = Ruleset {
            source: source.to_owned(),
            ..Default::default()
        };
        let mut current: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                current = Some(name.to_owned());
                rs.tables.entry(name.to_owned()).or_default();
                continue;
            }
            let Some(table) = current.as_ref().and_then(|t| rs.tables.get_mut(t)) else {
                continue;
            };
            if let Some(chain) = line.strip_prefix(':') {
                // ":FORWARD DROP [0:0]" (built-in) or ":DOCKER - [0:0]" (user chain)
                let mut it = chain.split_whitespace();
                let (Some(name), Some(policy)) = (it.next(), it.next()) else {
                    continue;
                };
                if policy != "-" {
                    if let Some(h) = hook_of_chain(name) {
                        table.hooks.push(h);
                    }
                    table.entries.push(Counted {
                        text: format!("-P {name} {policy}"),
                        packets: it.next().and_then(counters).unwrap_or(0),
                        drops: policy == "DROP",
                        source,
                    });
                }
            } else if line.starts_with('[') {
                let Some((c, rule)) = line.split_once(' ') else {
                    continue;
                };
                if rule.starts_with("-A ") {
                    let drops = rule.ends_with("-j DROP") || rule.contains("-j REJECT");
                    table.entries.push(Counted {
                        text: rule.to_owned(),
                        packets: counters(c).unwrap_or(0),
                        drops,
                        source,
                    });
                }
            }
        }
        rs
    }

    /// Adds `other`'s tables: same-named tables (iptables-nft's and legacy's `filter`, say)
    /// run at the same hooks and priorities, so their hooks and rules are pooled.
    pub fn merge(&mut self, other: Ruleset) {
        for (name, t) in other.tables {
            let mine = self.tables.entry(name).or_default();
            mine.hooks.extend(t.hooks);
            mine.hooks.sort_unstable();
            mine.hooks.dedup();
            mine.entries.extend(t.entries);
        }
        self.source = format!("{} + {}", self.source, other.source);
    }

    /// Adds the rules of native nftables tables (`nft list ruleset`), except iptables-nft's
    /// own tables, which iptables-save already printed in its own syntax.
    pub fn add_nft_rules(&mut self, rules: Vec<nft::NftRule>) {
        let from_iptables_nft = self.source.split(" + ").any(|s| s == "iptables-save");
        for r in rules {
            if r.family == "ip" && from_iptables_nft && IPTABLES_TABLES.contains(&r.table.as_str())
            {
                continue;
            }
            if !matches!(r.family.as_str(), "ip" | "inet") {
                continue;
            }
            // Without a counter there is nothing to compare: such a rule cannot be named.
            let Some(packets) = r.packets else { continue };
            self.tables
                .entry(r.table)
                .or_default()
                .entries
                .push(Counted {
                    text: r.text,
                    packets,
                    drops: r.drops,
                    source: "nft list ruleset",
                });
        }
    }

    /// Reads the live ruleset: iptables (the nf_tables backend, plus legacy tables where any
    /// exist), the nftables base chains, and native nftables rules; `None` if none of the
    /// commands is available.
    pub fn read() -> Option<Self> {
        let mut found: Option<Self> = None;
        for cmd in ["iptables-save", "iptables-legacy-save"] {
            // Legacy tables exist only once something created them; reading never creates one.
            if cmd == "iptables-legacy-save"
                && std::fs::read_to_string("/proc/net/ip_tables_names")
                    .map_or(true, |names| names.trim().is_empty())
            {
                continue;
            }
            let Ok(out) = Command::new(crate::probe::privilege::tool(cmd))
                .arg("-c")
                .output()
            else {
                continue;
            };
            if out.status.success() {
                let rs = Self::parse(&String::from_utf8_lossy(&out.stdout), cmd);
                if !rs.tables.is_empty() {
                    match found.as_mut() {
                        None => found = Some(rs),
                        Some(f) => f.merge(rs),
                    }
                }
            }
        }
        let nft = |args: &[&str]| {
            Command::new(crate::probe::privilege::tool("nft"))
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        if let Some(json) = nft(&["-j", "list", "chains"]) {
            let chains = parse_nft_chains(&json);
            if !chains.is_empty() {
                let rs = found.get_or_insert_with(|| Self {
                    source: "nft".into(),
                    ..Default::default()
                });
                rs.nft_chains = chains;
                if let Some(text) = nft(&["list", "ruleset"]) {
                    rs.add_nft_rules(nft::parse_ruleset(&text));
                }
            }
        }
        found
    }

    /// The tables that run at `hook`, by priority: iptables tables, and nftables tables by
    /// their own names (iptables-nft's tables appear in both; each is listed once).
    pub fn tables_at(&self, hook: u8) -> Vec<(String, i32)> {
        let mut out: Vec<(String, i32)> = self
            .tables
            .iter()
            .filter(|(_, t)| t.hooks.contains(&hook))
            .filter_map(|(n, _)| table_priority(n, hook).map(|p| (n.clone(), p)))
            .collect();
        for (h, table, prio) in &self.nft_chains {
            if *h == hook && !out.iter().any(|(n, p)| n == table && p == prio) {
                out.push((table.clone(), *prio));
            }
        }
        out.sort_by_key(|(_, p)| *p);
        out.dedup();
        out
    }

    /// The dropping rules (or DROP policy) of `table` whose counters grew since `before`:
    /// the rule that dropped a packet there. A built-in chain's policy only counts for `hook`.
    #[cfg(test)]
    pub fn dropped_by(
        &self,
        before: &Ruleset,
        table: &str,
        hook: u8,
    ) -> Vec<(String, &'static str)> {
        self.moved(before, table)
            .into_iter()
            .filter(|(text, _, _)| self.can_meet(table, hook, text))
            .map(|(text, source, _)| (text, source))
            .collect()
    }

    /// The dropping rules and DROP policies of `table` whose counters grew since `before`,
    /// with by how many packets.
    pub fn moved(&self, before: &Ruleset, table: &str) -> Vec<(String, &'static str, u64)> {
        let (Some(now), Some(then)) = (self.tables.get(table), before.tables.get(table)) else {
            return Vec::new();
        };
        now.entries
            .iter()
            .filter(|e| e.drops)
            .filter_map(|e| {
                let old = then
                    .entries
                    .iter()
                    .find(|o| o.text == e.text)
                    .map_or(0, |o| o.packets);
                (e.packets > old).then(|| (e.text.clone(), e.source, e.packets - old))
            })
            .collect()
    }

    /// Can a packet at `hook` meet this rule or policy of `table`: the hook's own chain's
    /// policy, or a rule in a chain reached from it by jumps.
    pub fn can_meet(&self, table: &str, hook: u8, text: &str) -> bool {
        let chain = hook_name(hook);
        match text.strip_prefix("-P ") {
            Some(p) => p.starts_with(&format!("{chain} ")),
            None => match rule_match::chain_of(text) {
                Some(c) => {
                    let Some(t) = self.tables.get(table) else {
                        return false;
                    };
                    let rules = t
                        .entries
                        .iter()
                        .map(|e| e.text.as_str())
                        .filter(|t| t.starts_with("-A "));
                    rule_match::reachable(rules, chain).contains(c)
                }
                // nft syntax: no chain to follow here.
                None => true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "# Generated by iptables-save
*nat
:PREROUTING ACCEPT [10:600]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [2:120]
:POSTROUTING ACCEPT [4:240]
:DOCKER - [0:0]
[3:180] -A POSTROUTING -s 172.18.0.0/16 ! -o br-7544f7b78348 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [50:4000]
:FORWARD DROP [1:60]
:OUTPUT ACCEPT [40:3000]
:DOCKER-USER - [0:0]
[120:9600] -A FORWARD -j DOCKER-USER
[5:300] -A INPUT -i ftlab-up -p tcp -m tcp --dport 7999 -j DROP
[2:120] -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j DROP
[99:9000] -A DOCKER-USER -j RETURN
COMMIT
";

    #[test]
    fn tables_per_hook_come_from_the_built_in_chains() {
        let rs = Ruleset::parse(SAVE, "iptables-save");
        assert_eq!(rs.tables_at(0), vec![("nat".to_owned(), -100)]);
        assert_eq!(rs.tables_at(2), vec![("filter".to_owned(), 0)]);
        assert_eq!(
            rs.tables_at(4),
            vec![("nat".to_owned(), 100)],
            "nat is SNAT at POSTROUTING"
        );
        assert_eq!(
            rs.tables_at(3),
            vec![("nat".to_owned(), -100), ("filter".to_owned(), 0)]
        );
    }

    #[test]
    fn the_rule_whose_counter_moved_is_named() {
        let before = Ruleset::parse(SAVE, "iptables-save");
        let after = Ruleset::parse(
            &SAVE.replace("[2:120] -A DOCKER-USER", "[3:180] -A DOCKER-USER"),
            "x",
        );
        assert_eq!(
            after.dropped_by(&before, "filter", 2),
            vec![(
                "-A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j DROP".to_owned(),
                "x"
            )]
        );
        assert!(after.dropped_by(&before, "nat", 2).is_empty());
        // A busy host's INPUT drops move that chain's counters too: never named for FORWARD.
        let busy = Ruleset::parse(
            &SAVE
                .replace("[2:120] -A DOCKER-USER", "[3:180] -A DOCKER-USER")
                .replace("[5:300] -A INPUT", "[9:540] -A INPUT"),
            "x",
        );
        let forward = busy.dropped_by(&before, "filter", 2);
        assert_eq!(forward.len(), 1, "{forward:?}");
        assert!(forward[0].0.starts_with("-A DOCKER-USER"));
        assert_eq!(
            busy.dropped_by(&before, "filter", 1).len(),
            1,
            "INPUT's own"
        );
        assert!(
            before.dropped_by(&before, "filter", 2).is_empty(),
            "nothing moved"
        );
    }

    #[test]
    fn nftables_base_chains_add_their_own_tables() {
        let mut rs = Ruleset::parse(SAVE, "iptables-save");
        rs.nft_chains = parse_nft_chains(
            r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
              {"chain":{"family":"ip","table":"filter","name":"FORWARD","hook":"forward","prio":0,"policy":"drop"}},
              {"chain":{"family":"inet","table":"firewalld","name":"fwd","hook":"forward","prio":10}},
              {"chain":{"family":"bridge","table":"br","name":"f","hook":"forward","prio":0}},
              {"chain":{"family":"ip","table":"filter","name":"DOCKER-USER"}}]}"#,
        );
        assert_eq!(
            rs.tables_at(2),
            vec![("filter".to_owned(), 0), ("firewalld".to_owned(), 10)],
            "iptables-nft's filter once, the native table by name, no bridge family"
        );
        assert!(parse_nft_chains("not json").is_empty());
    }

    #[test]
    fn a_drop_policy_is_named_only_for_its_own_hook() {
        let before = Ruleset::parse(SAVE, "iptables-save");
        let after = Ruleset::parse(
            &SAVE.replace(":FORWARD DROP [1:60]", ":FORWARD DROP [2:120]"),
            "x",
        );
        assert_eq!(
            after.dropped_by(&before, "filter", 2),
            vec![("-P FORWARD DROP".to_owned(), "x")]
        );
        assert!(after.dropped_by(&before, "filter", 1).is_empty());
    }

    #[test]
    fn legacy_tables_are_pooled_with_the_nf_tables_backend() {
        let mut rs = Ruleset::parse(SAVE, "iptables-save");
        let legacy = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                      [4:240] -A INPUT -p udp -m udp --dport 7777 -j DROP\nCOMMIT\n";
        let before = rs.clone();
        rs.merge(Ruleset::parse(legacy, "iptables-legacy-save"));
        assert_eq!(rs.source, "iptables-save + iptables-legacy-save");
        assert_eq!(
            rs.tables_at(1),
            vec![("filter".to_owned(), 0), ("nat".to_owned(), 100)]
        );
        let mut after = before.clone();
        after.merge(Ruleset::parse(
            &legacy.replace("[4:240]", "[5:300]"),
            "iptables-legacy-save",
        ));
        let mut base = before;
        base.merge(Ruleset::parse(legacy, "iptables-legacy-save"));
        assert_eq!(
            after.dropped_by(&base, "filter", 1),
            vec![(
                "-A INPUT -p udp -m udp --dport 7777 -j DROP".to_owned(),
                "iptables-legacy-save"
            )]
        );
    }

    #[test]
    fn native_nftables_rules_are_named_by_their_counters() {
        let text = |n: u64| {
            format!(
                "table ip filter {{\n\tchain FORWARD {{\n\t\tcounter packets {n} bytes 0 drop\n\t}}\n}}\n\
                 table inet ftlab {{\n\tchain input {{\n\t\ttype filter hook input priority 10; policy accept;\n\
                 \t\tudp dport 7778 counter packets {n} bytes 0 drop\n\t\tudp dport 7779 drop\n\t}}\n}}\n"
            )
        };
        let mut before = Ruleset::parse(SAVE, "iptables-save");
        before.add_nft_rules(crate::target::nft::parse_ruleset(&text(1)));
        let mut after = Ruleset::parse(SAVE, "iptables-save");
        after.add_nft_rules(crate::target::nft::parse_ruleset(&text(2)));
        assert_eq!(
            after.dropped_by(&before, "ftlab", 1),
            vec![(
                "add rule inet ftlab input udp dport 7778 counter drop".to_owned(),
                "nft list ruleset"
            )],
            "the counted rule; the one without a counter cannot be named"
        );
        // iptables-nft's own `ip filter` is iptables-save's to print, not nft's.
        assert!(after.dropped_by(&before, "filter", 2).is_empty());
    }
}

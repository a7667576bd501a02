//! The text of each nftables rule by its handle, for naming the rule an nftrace event points
//! at. Rules of iptables-nft's tables are given as `iptables -S` prints them: `nft -a list
//! ruleset` and `iptables-save` list a chain's rules in the same order, so the n-th rule of a
//! chain is the n-th `-A CHAIN` line. Native nftables rules are given in nft syntax.

use std::{collections::HashMap, process::Command, sync::Arc};

use super::{
    nft::{self, BaseChain, NftRule},
    ruleset::Ruleset,
};

/// (family, table, chain).
type ChainId = (String, String, String);

/// One chain's rule texts by handle, and its hook and policy when it is a base chain.
#[derive(Clone, Debug, Default)]
struct Chain {
    /// Shared with every decision that names the rule.
    rules: HashMap<u64, Arc<str>>,
    base: Option<BaseChain>,
}

/// Chains by family, table and name: nested, so that a lookup by `&str` allocates nothing
/// (every nftables walk of a traced packet looks up its chain and rule here).
#[derive(Clone, Debug, Default)]
pub struct RuleTexts {
    chains: HashMap<String, HashMap<String, HashMap<String, Chain>>>,
}

/// The iptables tables as iptables-save printed them, by family: (`ip`, `iptables-save`),
/// (`ip6`, `ip6tables-save`).
pub type Saved<'a> = &'a [(&'a str, &'a Ruleset)];

impl RuleTexts {
    /// From `nft -a list ruleset` and the iptables-nft tables' `iptables-save` text.
    pub fn build(nft_text: &str, saved: Saved<'_>) -> Self {
        let mut by_chain: HashMap<ChainId, Vec<NftRule>> = HashMap::new();
        for r in nft::parse_ruleset(nft_text) {
            by_chain
                .entry((r.family.clone(), r.table.clone(), r.chain.clone()))
                .or_default()
                .push(r);
        }
        let mut texts = Self::default();
        for (id, list) in by_chain {
            let iptables = iptables_lines(saved, &id, list.len());
            let chain = texts.chain_mut(&id);
            for (i, r) in list.into_iter().enumerate() {
                let Some(handle) = r.handle else { continue };
                let text = match &iptables {
                    Some(lines) => lines[i].as_str(),
                    None => r.text.as_str(),
                };
                chain.rules.insert(handle, Arc::from(text));
            }
        }
        for b in nft::parse_base_chains(nft_text) {
            let id = (b.family.clone(), b.table.clone(), b.chain.clone());
            texts.chain_mut(&id).base = Some(b);
        }
        texts
    }

    fn chain_mut(&mut self, (family, table, chain): &ChainId) -> &mut Chain {
        self.chains
            .entry(family.clone())
            .or_default()
            .entry(table.clone())
            .or_default()
            .entry(chain.clone())
            .or_default()
    }

    fn chain(&self, family: &str, table: &str, chain: &str) -> Option<&Chain> {
        self.chains.get(family)?.get(table)?.get(chain)
    }

    /// Reads the live ruleset (`nft -a list ruleset`, `iptables-save`, `ip6tables-save`).
    pub fn read() -> Self {
        let run = |cmd: &str, args: &[&str]| {
            Command::new(crate::probe::privilege::tool(cmd))
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let Some(text) = run("nft", &["-a", "list", "ruleset"]) else {
            return Self::default();
        };
        let v4 = run("iptables-save", &["-c"]).map(|t| Ruleset::parse(&t, "iptables-save"));
        let v6 = run("ip6tables-save", &["-c"]).map(|t| Ruleset::parse(&t, "ip6tables-save"));
        let mut saved = Vec::new();
        if let Some(r) = v4.as_ref() {
            saved.push(("ip", r));
        }
        if let Some(r) = v6.as_ref() {
            saved.push(("ip6", r));
        }
        Self::build(&text, &saved)
    }

    /// The rule's text, if the handle is known.
    pub fn rule(&self, family: &str, table: &str, chain: &str, handle: u64) -> Option<&str> {
        self.shared_rule(family, table, chain, handle).map(|r| &**r)
    }

    /// The rule's text as decisions hold it (one copy for all of them).
    pub fn shared_rule(
        &self,
        family: &str,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> Option<&Arc<str>> {
        self.chain(family, table, chain)?.rules.get(&handle)
    }

    /// The base chain a walk started in: its hook and policy.
    pub fn base_chain(&self, family: &str, table: &str, chain: &str) -> Option<&BaseChain> {
        self.chain(family, table, chain)?.base.as_ref()
    }
}

/// The `-A CHAIN …` lines of an iptables-nft chain, when iptables-save printed that table and
/// as many rules in that chain as nft did (else nft's own text is used).
fn iptables_lines(
    saved: Saved<'_>,
    (family, table, chain): &ChainId,
    n: usize,
) -> Option<Vec<String>> {
    let (_, rs) = saved.iter().find(|(f, _)| f == family)?;
    let t = rs.tables.get(table)?;
    let prefix = format!("-A {chain} ");
    let lines: Vec<String> = t
        .entries
        .iter()
        .filter(|e| e.text.starts_with(&prefix))
        .map(|e| e.text.clone())
        .collect();
    (lines.len() == n).then_some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT: &str = "# Warning: table ip filter is managed by iptables-nft, do not touch!
table ip filter { # handle 2
\tchain DOCKER-USER { # handle 7
\t\tip daddr 198.51.100.2 meta l4proto tcp tcp dport 8081 counter packets 3 bytes 180 drop # handle 23
\t\tcounter packets 5 bytes 300 return # handle 24
\t}
\tchain FORWARD { # handle 3
\t\ttype filter hook forward priority filter; policy drop;
\t\tcounter packets 0 bytes 0 jump DOCKER-USER # handle 8
\t}
}
table inet ftlab { # handle 9
\tchain input { # handle 1
\t\ttype filter hook input priority filter + 10; policy accept;
\t\tudp dport 7778 counter packets 3 bytes 87 drop # handle 4
\t}
}
";
    const SAVE: &str = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n\
        -A FORWARD -j DOCKER-USER\n\
        -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j DROP\n\
        -A DOCKER-USER -j RETURN\nCOMMIT\n";

    fn texts() -> RuleTexts {
        let v4 = Ruleset::parse(&SAVE.replace("\n-A", "\n[0:0] -A"), "iptables-save");
        RuleTexts::build(NFT, &[("ip", &v4)])
    }

    #[test]
    fn iptables_nft_rules_are_named_as_iptables_prints_them() {
        let t = texts();
        assert_eq!(
            t.rule("ip", "filter", "DOCKER-USER", 23),
            Some("-A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j DROP")
        );
        assert_eq!(
            t.rule("ip", "filter", "DOCKER-USER", 24),
            Some("-A DOCKER-USER -j RETURN")
        );
        assert_eq!(
            t.rule("ip", "filter", "FORWARD", 8),
            Some("-A FORWARD -j DOCKER-USER")
        );
        assert_eq!(t.rule("ip", "filter", "FORWARD", 23), None);
    }

    #[test]
    fn native_rules_in_nft_syntax_and_base_chains_with_hooks() {
        let t = texts();
        assert_eq!(
            t.rule("inet", "ftlab", "input", 4),
            Some("add rule inet ftlab input udp dport 7778 counter drop")
        );
        let b = t.base_chain("ip", "filter", "FORWARD").expect("base");
        assert_eq!((b.hook, b.policy.as_str()), (2, "drop"));
        assert!(t.base_chain("ip", "filter", "DOCKER-USER").is_none());
    }

    #[test]
    fn a_chain_that_iptables_lists_differently_keeps_nfts_text() {
        let v4 = Ruleset::parse(
            "*filter\n[0:0] -A DOCKER-USER -j RETURN\nCOMMIT\n",
            "iptables-save",
        );
        let t = RuleTexts::build(NFT, &[("ip", &v4)]);
        assert_eq!(
            t.rule("ip", "filter", "DOCKER-USER", 24),
            Some("add rule ip filter DOCKER-USER counter return")
        );
    }
}

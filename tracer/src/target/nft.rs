//! Native nftables rules with their counters, from `nft list ruleset`: which rule of a plain
//! nftables table dropped a packet is named the same way as for iptables, by the counter that
//! moved. A rule without a `counter` statement cannot be named this way.

/// One rule of a native nftables table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// As `nft add rule` takes it: `add rule inet t input udp dport 7 counter drop`.
    pub text: String,
    /// From its `counter packets N bytes M` statement (None: the rule has no counter).
    pub packets: Option<u64>,
    /// Its verdict is `drop` or `reject`.
    pub drops: bool,
    /// Its handle, when listed with `-a` (`# handle N`).
    pub handle: Option<u64>,
    /// Its position in its chain (0 first).
    pub index: usize,
}

/// A base chain: where a chain is hooked (`type filter hook forward priority …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The IPv4/IPv6 hook number (0 prerouting … 4 postrouting).
    pub hook: u8,
    /// `accept` or `drop`.
    pub policy: String,
}

/// The base chains of `nft list ruleset` (with or without `-a`).
pub fn parse_base_chains(text: &str) -> Vec<BaseChain> {
    let hooks = ["prerouting", "input", "forward", "output", "postrouting"];
    let mut out = Vec::new();
    let (mut family, mut table, mut chain) = ("", "", "");
    for line in text.lines() {
        let line = line.split(" # ").next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", f, t, "{"] => (family, table) = (f, t),
            ["chain", c, "{"] => chain = c,
            ["type", _, "hook", h, ..] => {
                let Some(hook) = hooks.iter().position(|x| x == h) else {
                    continue;
                };
                let policy = words
                    .iter()
                    .position(|w| *w == "policy")
                    .and_then(|i| words.get(i + 1))
                    .map_or("accept", |p| p.trim_end_matches(';'));
                out.push(BaseChain {
                    family: family.to_owned(),
                    table: table.to_owned(),
                    chain: chain.to_owned(),
                    hook: hook as u8,
                    policy: policy.to_owned(),
                });
            }
            _ => {}
        }
    }
    out
}

/// The `# handle N` comment of a line listed with `-a`.
fn handle_of(line: &str) -> Option<u64> {
    let (_, comment) = line.rsplit_once("# handle ")?;
    comment.split_whitespace().next()?.parse().ok()
}

/// Removes `packets N bytes M` after `counter`, returning the text and N.
fn strip_counter(rule: &str) -> (String, Option<u64>) {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    let mut packets = None;
    let mut i = 0;
    while i < words.len() {
        out.push(words[i]);
        if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
            packets = words.get(i + 2).and_then(|n| n.parse().ok());
            // "counter packets N bytes M": keep "counter", skip the four after it.
            i += if words.get(i + 3) == Some(&"bytes") {
                5
            } else {
                3
            };
            continue;
        }
        i += 1;
    }
    (out.join(" "), packets)
}

/// Parses `nft list ruleset` (with or without `-a`): the rules of every chain of every table.
pub fn parse_ruleset(text: &str) -> Vec<NftRule> {
    let mut out = Vec::new();
    let (mut family, mut table, mut chain) = (String::new(), String::new(), None::<String>);
    let mut index = 0;
    // Depth of `{ … }` nesting: 1 inside a table, 2 inside a chain (or a set, map, …).
    let mut depth = 0usize;
    for raw in text.lines() {
        let line = raw.split(" # ").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "}" {
            depth = depth.saturating_sub(1);
            if depth < 2 {
                chain = None;
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.ends_with('{') {
            match (depth, words.as_slice()) {
                (0, ["table", f, t, "{"]) => {
                    family = (*f).to_owned();
                    table = (*t).to_owned();
                }
                (1, ["chain", c, "{"]) => {
                    chain = Some((*c).to_owned());
                    index = 0;
                }
                _ => {}
            }
            depth += 1;
            continue;
        }
        let Some(c) = chain.as_ref().filter(|_| depth == 2) else {
            continue;
        };
        // A base chain's `type … hook … priority …; policy …;` line is not a rule.
        if words.first() == Some(&"type") || words.first() == Some(&"policy") {
            continue;
        }
        let (body, packets) = strip_counter(line);
        let drops = matches!(words.last(), Some(&"drop")) || words.contains(&"reject");
        out.push(NftRule {
            family: family.clone(),
            table: table.clone(),
            chain: c.clone(),
            text: format!("add rule {family} {table} {c} {body}"),
            packets,
            drops,
            handle: handle_of(raw),
            index,
        });
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = "table ip filter {
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy drop;
\t\tcounter packets 10 bytes 600 jump DOCKER-USER
\t}
}
table inet ftlab {
\tset blocked {
\t\ttype ipv4_addr
\t\telements = { 203.0.113.9 }
\t}

\tchain input {
\t\ttype filter hook input priority filter + 10; policy accept;
\t\tudp dport 7778 counter packets 3 bytes 87 drop
\t\tip saddr @blocked drop
\t\ttcp dport 22 counter packets 0 bytes 0 accept # a comment
\t}
}
";

    #[test]
    fn rules_with_their_counters_and_verdicts() {
        let rules = parse_ruleset(RULESET);
        let texts: Vec<(&str, Option<u64>, bool)> = rules
            .iter()
            .map(|r| (r.text.as_str(), r.packets, r.drops))
            .collect();
        assert_eq!(
            texts,
            vec![
                (
                    "add rule ip filter FORWARD counter jump DOCKER-USER",
                    Some(10),
                    false
                ),
                (
                    "add rule inet ftlab input udp dport 7778 counter drop",
                    Some(3),
                    true
                ),
                (
                    "add rule inet ftlab input ip saddr @blocked drop",
                    None,
                    true
                ),
                (
                    "add rule inet ftlab input tcp dport 22 counter accept",
                    Some(0),
                    false
                ),
            ]
        );
        assert_eq!(
            (rules[1].family.as_str(), rules[1].table.as_str()),
            ("inet", "ftlab")
        );
        assert!(parse_ruleset("garbage {\n}\n}\n").is_empty());
    }
}

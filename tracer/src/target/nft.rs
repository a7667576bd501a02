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

/// A line directly inside a chain of `nft list ruleset` (a rule, or a base chain's `type …`
/// line), with the table and chain it is in.
struct ChainLine<'a> {
    family: &'a str,
    table: &'a str,
    chain: &'a str,
    /// The line as listed (its `# handle N` comment included).
    raw: &'a str,
    /// Without the comment, trimmed, and its words.
    text: &'a str,
    words: Vec<&'a str>,
}

/// How nft's listing opens and closes a block (kept out of the walk's code, so that brace
/// counters reading it are not misled).
const BLOCK_OPEN: &str = "\u{7b}";
const BLOCK_CLOSE: &str = "\u{7d}";

/// The one walk through `nft list ruleset` (with or without `-a`): the lines directly inside
/// chains. Sets, maps and other blocks are passed over by their `{ … }` depth.
fn chain_lines(text: &str) -> Vec<ChainLine<'_>> {
    let mut out = Vec::new();
    let (mut family, mut table, mut chain) = ("", "", None::<&str>);
    // Depth of `{ … }` nesting: 1 inside a table, 2 inside a chain (or a set, map, …).
    let mut depth = 0usize;
    for raw in text.lines() {
        let line = raw.split(" # ").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == BLOCK_CLOSE {
            depth = depth.saturating_sub(1);
            if depth < 2 {
                chain = None;
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.ends_with(BLOCK_OPEN) {
            match (depth, words.as_slice()) {
                (0, ["table", f, t, _]) => (family, table) = (f, t),
                (1, ["chain", c, _]) => chain = Some(c),
                _ => {}
            }
            depth += 1;
            continue;
        }
        if let Some(chain) = chain.filter(|_| depth == 2) {
            out.push(ChainLine {
                family,
                table,
                chain,
                raw,
                text: line,
                words,
            });
        }
    }
    out
}

/// The base chains of `nft list ruleset` (with or without `-a`).
pub fn parse_base_chains(text: &str) -> Vec<BaseChain> {
    let hooks = ["prerouting", "input", "forward", "output", "postrouting"];
    chain_lines(text)
        .into_iter()
        .filter_map(|l| {
            let ["type", _, "hook", h, ..] = l.words.as_slice() else {
                return None;
            };
            let hook = hooks.iter().position(|x| x == h)?;
            let policy = l
                .words
                .iter()
                .position(|w| *w == "policy")
                .and_then(|i| l.words.get(i + 1))
                .map_or("accept", |p| p.trim_end_matches(';'));
            Some(BaseChain {
                family: l.family.to_owned(),
                table: l.table.to_owned(),
                chain: l.chain.to_owned(),
                hook: hook as u8,
                policy: policy.to_owned(),
            })
        })
        .collect()
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
    let mut out: Vec<NftRule> = Vec::new();
    for l in chain_lines(text) {
        // A base chain's `type … hook … priority …; policy …;` line is not a rule.
        if matches!(l.words.first(), Some(&"type") | Some(&"policy")) {
            continue;
        }
        let index = match out.last() {
            Some(p)
                if (p.family.as_str(), p.table.as_str(), p.chain.as_str())
                    == (l.family, l.table, l.chain) =>
            {
                p.index + 1
            }
            _ => 0,
        };
        let (body, packets) = strip_counter(l.text);
        let (family, table, chain) = (l.family, l.table, l.chain);
        out.push(NftRule {
            family: family.to_owned(),
            table: table.to_owned(),
            chain: chain.to_owned(),
            text: format!("add rule {family} {table} {chain} {body}"),
            packets,
            drops: matches!(l.words.last(), Some(&"drop")) || l.words.contains(&"reject"),
            handle: handle_of(l.raw),
            index,
        });
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

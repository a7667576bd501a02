//! The one error type of flowtrace. Every error a user can cause has a sentence that says
//! what went wrong and a hint that says what to do about it.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("root is needed, or the capabilities below (to load eBPF programs and attach them to interfaces)")]
    NotRoot,

    #[error("cannot reach the Docker daemon: {0}")]
    DockerUnreachable(String),

    #[error("no container named or with id `{name}`{}", did_you_mean(.suggestions))]
    UnknownContainer {
        name: String,
        suggestions: Vec<String>,
    },

    #[error("no Docker network named `{0}`")]
    UnknownNetwork(String),

    #[error("container `{0}` is not running")]
    ContainerNotRunning(String),

    #[error(
        "container `{0}` has no network interface that leads to the host (host or none network?)"
    )]
    NoContainerInterfaces(String),

    #[error("no interface named `{0}` in the host network namespace")]
    UnknownInterface(String),

    #[error("nothing to trace: give --container, --network, --netns or --iface")]
    NoTarget,

    #[error("cannot enter the network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },

    #[error("netlink request failed: {0}")]
    Netlink(String),

    #[error("the kernel refused to load the eBPF programs: {0}")]
    Load(String),

    #[error("cannot attach tc {direction} on {iface}: {reason}")]
    Attach {
        iface: String,
        direction: &'static str,
        reason: String,
    },

    #[error("cannot read {path} as a flowtrace recording: {reason}")]
    BadFile { path: PathBuf, reason: String },

    #[error("cannot write {path}: {source}")]
    Output { path: PathBuf, source: io::Error },

    #[error("invalid size `{0}` (use e.g. 500K, 100M, 2G)")]
    InvalidSize(String),

    #[error("invalid duration `{0}` (use e.g. 500ms, 10s, 2m, 1h; at most a year)")]
    InvalidDuration(String),

    #[error("`{0}` is not a Docker container or network name")]
    InvalidName(String),

    #[error(transparent)]
    Filter(#[from] crate::pcapfilter::FilterError),

    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

impl Error {
    /// A load failure in one line: the verifier's log that follows it (often hundreds of
    /// lines) goes to the debug log instead (`-vv`).
    pub fn load(what: impl std::fmt::Display) -> Self {
        let full = what.to_string();
        let mut lines = full.lines();
        let first = lines.next().unwrap_or_default().to_owned();
        match lines.count() {
            0 => Error::Load(full),
            n => {
                log::debug!("{full}");
                Error::Load(format!(
                    "{first} … ({n} more lines of verifier log with -vv)"
                ))
            }
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Self::NotRoot => "run it with sudo, or grant CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_ADMIN (and CAP_NET_RAW, CAP_SYS_PTRACE to follow restarts and legacy iptables)",
            Self::DockerUnreachable(_) => {
                "is dockerd running and /var/run/docker.sock reachable (DOCKER_HOST)? For a non-Docker target use --netns PATH or --iface"
            }
            Self::UnknownContainer { .. } => "`docker ps` lists the running containers",
            Self::InvalidName(_) => {
                "names are letters, digits, `_`, `.` and `-` (`docker ps` and `docker network ls` list them); ids are hex"
            }
            Self::UnknownNetwork(_) => "`docker network ls` lists the networks",
            Self::ContainerNotRunning(_) => "start it first (`docker start NAME`)",
            Self::NoContainerInterfaces(_) => "trace the host's interfaces with --iface instead",
            Self::UnknownInterface(_) => "`ip -br link` lists the interfaces",
            Self::NoTarget => "e.g. `sudo flowtrace --container ens_monitor_cron`",
            Self::Load(_) => "the kernel needs BPF, BTF and ring buffers (Linux 5.8 or later); run as root",
            Self::Attach { .. } => "another tool may hold the interface's tc hook, or the interface vanished",
            Self::Output { .. } => "check that the directory exists and that root may write there",
            Self::BadFile { .. } => {
                "`tshark -r FILE` shows what the file holds; flowtrace reads files written by `flowtrace --write`"
            }
            Self::Filter(_) => {
                "the syntax is tcpdump's (man 7 pcap-filter); `tcpdump -d 'EXPR'` shows how libpcap compiles it"
            }
            Self::InvalidDuration(_)
            | Self::InvalidSize(_)
            | Self::Netns { .. }
            | Self::Netlink(_)
            | Self::Io { .. } => {
                return None
            }
        })
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn a_verifier_log_is_kept_out_of_the_one_sentence() {
        let e = Error::load("tc_ingress: refused. Verifier output: 0: r1 = ctx\n1: call\n2: exit");
        assert_eq!(
            e.to_string(),
            "the kernel refused to load the eBPF programs: tc_ingress: refused. Verifier output: \
             0: r1 = ctx … (2 more lines of verifier log with -vv)"
        );
        assert_eq!(
            Error::load("one line").to_string(),
            "the kernel refused to load the eBPF programs: one line"
        );
    }

    use super::*;

    #[test]
    fn unknown_container_suggests_close_names() {
        let e = Error::UnknownContainer {
            name: "ens_monitr_cron".into(),
            suggestions: vec!["ens_monitor_cron".into()],
        };
        assert_eq!(
            e.to_string(),
            "no container named or with id `ens_monitr_cron` (did you mean ens_monitor_cron?)"
        );
        assert!(e.hint().is_some());
    }

    #[test]
    fn unknown_container_without_suggestions_has_no_parenthesis() {
        let e = Error::UnknownContainer {
            name: "x".into(),
            suggestions: vec![],
        };
        assert_eq!(e.to_string(), "no container named or with id `x`");
    }
}

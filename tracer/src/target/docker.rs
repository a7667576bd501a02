//! Container metadata from the Docker API (bollard): which process, which networks, which IPs.

use std::net::IpAddr;

use std::collections::HashMap;

use bollard::query_parameters::{
    EventsOptionsBuilder, InspectNetworkOptions, ListContainersOptionsBuilder,
};
use futures_util::{Stream, StreamExt};

use crate::error::{Error, Result};

/// One network endpoint of a container, as Docker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub network: String,
    pub network_id: String,
    pub ip: Option<IpAddr>,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub mac: String,
}

/// A container port published on the host (`-p 18080:80/tcp`): packets to the host port are
/// DNATed to the container before it can be told by its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Published {
    /// 6 TCP, 17 UDP, 132 SCTP.
    pub proto: u8,
    pub host_port: u16,
    pub container_port: u16,
}

/// What flowtrace needs to know about a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub pid: u32,
    pub endpoints: Vec<Endpoint>,
    pub published: Vec<Published>,
}

/// Docker's port map (`"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}]`), as a sorted
/// list without repeats (Docker lists IPv4 and IPv6 bindings of one port separately).
pub fn published_ports(
    map: &HashMap<String, Option<Vec<bollard::models::PortBinding>>>,
) -> Vec<Published> {
    let mut out: Vec<Published> = map
        .iter()
        .flat_map(|(spec, bindings)| {
            let (port, proto) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
            let proto = match proto {
                "tcp" => Some(6),
                "udp" => Some(17),
                "sctp" => Some(132),
                _ => None,
            };
            let container_port = port.parse::<u16>().ok();
            bindings.iter().flatten().filter_map(move |b| {
                Some(Published {
                    proto: proto?,
                    host_port: b.host_port.as_deref()?.parse().ok()?,
                    container_port: container_port?,
                })
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

impl ContainerInfo {
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Cheap to clone: bollard's client is a shared handle.
#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
}

/// A traced container started or stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Started {
        id: String,
        name: String,
    },
    Stopped {
        id: String,
        name: String,
    },
    /// Connected to or disconnected from a network: its interfaces and addresses changed.
    Networks {
        id: String,
        name: String,
        network: String,
    },
    /// About the event stream itself (it failed, it is back): a note for the user.
    Note(String),
}

/// Backoff between subscriptions to Docker's event stream after it failed or ended.
const RESUBSCRIBE_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RESUBSCRIBE_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// A new subscription is back once it has held this long (or delivered an event): one that
/// fails at once, while dockerd is still starting, is not announced.
const RESUBSCRIBE_SETTLE: std::time::Duration = std::time::Duration::from_millis(750);
const ENDED: &str = "it ended (was dockerd stopped?)";

/// Forwards `subscribe()`'s events to `tx` for as long as `tx` is open. When a subscription
/// fails or ends (dockerd restarted, say), a note says so and why, and after a backoff (1 s,
/// doubling to 30 s) it subscribes again; once back, each watched container is looked up again
/// (a `Started`), since what happened meanwhile was not seen.
pub async fn follow_events<S, F>(
    mut subscribe: F,
    watched: Vec<String>,
    tx: tokio::sync::mpsc::Sender<Lifecycle>,
) where
    F: FnMut() -> S,
    S: Stream<Item = std::result::Result<Lifecycle, String>> + Send,
{
    let mut backoff = RESUBSCRIBE_FIRST;
    let mut again = false;
    loop {
        let mut events = Box::pin(subscribe());
        let why = 'subscription: {
            if again {
                let first = match tokio::time::timeout(RESUBSCRIBE_SETTLE, events.next()).await {
                    Err(_) => None,
                    Ok(Some(Ok(ev))) => Some(ev),
                    Ok(Some(Err(e))) => break 'subscription e,
                    Ok(None) => break 'subscription ENDED.to_owned(),
                };
                if !announce_back(&tx, &watched).await {
                    return;
                }
                if let Some(ev) = first {
                    backoff = RESUBSCRIBE_FIRST;
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                match events.next().await {
                    Some(Ok(ev)) => {
                        backoff = RESUBSCRIBE_FIRST;
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => break 'subscription e,
                    None => break 'subscription ENDED.to_owned(),
                }
            }
        };
        let note = format!(
            "Docker's event stream failed: {why}; subscribing again in {} s",
            backoff.as_secs()
        );
        if tx.send(Lifecycle::Note(note)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
        again = true;
    }
}

/// Says the stream is back and has every watched container looked up again; false once
/// nobody listens.
async fn announce_back(tx: &tokio::sync::mpsc::Sender<Lifecycle>, watched: &[String]) -> bool {
    let back = "Docker's event stream is back; looking the traced containers up again";
    if tx.send(Lifecycle::Note(back.into())).await.is_err() {
        return false;
    }
    for name in watched {
        let ev = Lifecycle::Started {
            id: String::new(),
            name: name.clone(),
        };
        if tx.send(ev).await.is_err() {
            return false;
        }
    }
    true
}

impl Docker {
    /// Connects to the local daemon (DOCKER_HOST or /var/run/docker.sock) and negotiates the
    /// API version, so old daemons (Debian's 20.10) work too.
    pub async fn connect() -> Result<Self> {
        let unreachable = |e: bollard::errors::Error| Error::DockerUnreachable(e.to_string());
        let client = bollard::Docker::connect_with_local_defaults().map_err(unreachable)?;
        let client = client.negotiate_version().await.map_err(unreachable)?;
        client.ping().await.map_err(unreachable)?;
        Ok(Self { client })
    }

    pub async fn container(&self, name_or_id: &str) -> Result<ContainerInfo> {
        let resp = match self.client.inspect_container(name_or_id, None).await {
            Ok(resp) => resp,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let names = self.container_names().await.unwrap_or_default();
                return Err(Error::UnknownContainer {
                    name: name_or_id.to_owned(),
                    suggestions: suggest(name_or_id, &names),
                });
            }
            Err(e) => return Err(Error::DockerUnreachable(e.to_string())),
        };
        let name = resp
            .name
            .as_deref()
            .unwrap_or(name_or_id)
            .trim_start_matches('/')
            .to_owned();
        let state = resp.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let pid = state.and_then(|s| s.pid).unwrap_or(0);
        if !running || pid <= 0 {
            return Err(Error::ContainerNotRunning(name));
        }
        let mut endpoints: Vec<Endpoint> = resp
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|nets| {
                nets.iter()
                    .map(|(net, ep)| Endpoint {
                        network: net.clone(),
                        network_id: ep.network_id.clone().unwrap_or_default(),
                        ip: ep.ip_address.as_deref().and_then(|s| s.parse().ok()),
                        prefix_len: ep.ip_prefix_len.unwrap_or(0).clamp(0, 128) as u8,
                        gateway: ep.gateway.as_deref().and_then(|s| s.parse().ok()),
                        mac: ep.mac_address.clone().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        endpoints.sort_by(|a, b| a.network.cmp(&b.network));
        let published = resp
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
            .map(published_ports)
            .unwrap_or_default();
        Ok(ContainerInfo {
            id: resp.id.unwrap_or_default(),
            name,
            image: resp
                .config
                .and_then(|c| c.image)
                .or(resp.image)
                .unwrap_or_default(),
            pid: pid as u32,
            endpoints,
            published,
        })
    }

    /// Start and stop events of containers (by name or id, as given), and the network
    /// connects and disconnects of the containers in `ids` (id, name): Docker's filter on
    /// containers leaves network events out, so those come from a second subscription.
    pub fn lifecycle(
        &self,
        containers: &[String],
        ids: &[(String, String)],
    ) -> impl Stream<Item = Lifecycle> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (me, watched, ids) = (self.clone(), containers.to_vec(), ids.to_vec());
        let names = watched.clone();
        tokio::spawn(follow_events(
            move || me.subscribe(&names, &ids),
            watched,
            tx,
        ));
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
        )
    }

    /// One subscription to Docker's events: the watched containers' starts and deaths, and
    /// network (dis)connections of the containers in `ids`; an error ends it.
    fn subscribe(
        &self,
        containers: &[String],
        ids: &[(String, String)],
    ) -> impl Stream<Item = std::result::Result<Lifecycle, String>> + Send + 'static {
        let mut filters: HashMap<&str, Vec<String>> = HashMap::new();
        filters.insert("type", vec!["container".into()]);
        filters.insert("event", vec!["start".into(), "die".into()]);
        filters.insert("container", containers.to_vec());
        let opts = EventsOptionsBuilder::new().filters(&filters).build();
        let starts = self.client.events(Some(opts)).filter_map(|ev| async move {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => return Some(Err(e.to_string())),
            };
            let actor = ev.actor?;
            let id = actor.id.unwrap_or_default();
            let name = actor
                .attributes
                .and_then(|a| a.get("name").cloned())
                .unwrap_or_else(|| id.clone());
            match ev.action.as_deref()? {
                "start" => Some(Ok(Lifecycle::Started { id, name })),
                "die" => Some(Ok(Lifecycle::Stopped { id, name })),
                _ => None,
            }
        });
        let mut net_filters: HashMap<&str, Vec<String>> = HashMap::new();
        net_filters.insert("type", vec!["network".into()]);
        net_filters.insert("event", vec!["connect".into(), "disconnect".into()]);
        let opts = EventsOptionsBuilder::new().filters(&net_filters).build();
        let ids: HashMap<String, String> = ids.iter().cloned().collect();
        let nets = self.client.events(Some(opts)).filter_map(move |ev| {
            let found = match ev {
                Err(e) => Some(Err(e.to_string())),
                Ok(ev) => (|| {
                    let attrs = ev.actor?.attributes?;
                    let id = attrs.get("container")?.clone();
                    let name = ids.get(&id)?.clone();
                    Some(Ok(Lifecycle::Networks {
                        id,
                        name,
                        network: attrs.get("name").cloned().unwrap_or_default(),
                    }))
                })(),
            };
            async move { found }
        });
        // The follower drops both at the first error and opens them again.
        futures_util::stream::select(starts, nets)
    }

    /// Ids of the containers attached to a network.
    pub async fn network_containers(&self, network: &str) -> Result<Vec<String>> {
        match self
            .client
            .inspect_network(network, None::<InspectNetworkOptions>)
            .await
        {
            Ok(net) => {
                let mut ids: Vec<String> = net.containers.unwrap_or_default().into_keys().collect();
                ids.sort();
                Ok(ids)
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(Error::UnknownNetwork(network.to_owned())),
            Err(e) => Err(Error::DockerUnreachable(e.to_string())),
        }
    }

    async fn container_names(&self) -> Result<Vec<String>> {
        let opts = ListContainersOptionsBuilder::default().all(true).build();
        let list = self
            .client
            .list_containers(Some(opts))
            .await
            .map_err(|e| Error::DockerUnreachable(e.to_string()))?;
        Ok(list
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect())
    }
}

/// Names close to `wanted` (edit distance ≤ 3, or containing it), closest first, at most 3.
pub fn suggest(wanted: &str, names: &[String]) -> Vec<String> {
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter_map(|n| {
            let d = edit_distance(wanted, n);
            (d <= 3 || (wanted.len() >= 3 && n.contains(wanted))).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, n)| n.clone()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {

    /// A stream that fails is reported, subscribed again after the backoff, and the watched
    /// containers are looked up again once it is back; its events then flow as before.
    #[tokio::test(start_paused = true)]
    async fn a_failed_event_stream_is_reported_and_subscribed_again() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut n = 0;
        let subscribe = move || {
            n += 1;
            let items: Vec<std::result::Result<Lifecycle, String>> = match n {
                1 => vec![Err("connection reset".into())],
                2 => vec![],
                _ => vec![Ok(Lifecycle::Stopped {
                    id: "1".into(),
                    name: "cron".into(),
                })],
            };
            futures_util::stream::iter(items)
        };
        let task = tokio::spawn(follow_events(subscribe, vec!["cron".into()], tx));
        let mut seen = Vec::new();
        while seen.len() < 7 {
            match rx.recv().await {
                Some(ev) => seen.push(ev),
                None => break,
            }
        }
        task.abort();
        let notes: Vec<&String> = seen
            .iter()
            .filter_map(|e| match e {
                Lifecycle::Note(n) => Some(n),
                _ => None,
            })
            .collect();
        assert!(
            notes[0].contains("connection reset") && notes[0].contains("in 1 s"),
            "{notes:?}"
        );
        // The second subscription ends at once (dockerd still starting): not announced as
        // back, and the backoff grows.
        assert!(
            notes[1].contains("ended") && notes[1].contains("in 2 s"),
            "{notes:?}"
        );
        assert!(notes[2].contains("is back"), "{notes:?}");
        assert!(
            seen.iter()
                .any(|e| matches!(e, Lifecycle::Started { name, .. } if name == "cron")),
            "looked up again: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|e| matches!(e, Lifecycle::Stopped { name, .. } if name == "cron")),
            "events flow again: {seen:?}"
        );
    }

    use super::*;

    #[test]
    fn suggests_near_misses_and_substrings() {
        let names: Vec<String> = ["ens_monitor_cron", "ens_monitor_peer", "redis"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(suggest("ens_monitr_cron", &names), vec!["ens_monitor_cron"]);
        assert_eq!(suggest("redis", &names), vec!["redis"]);
        let s = suggest("monitor", &names);
        assert_eq!(s.len(), 2);
        assert!(suggest("postgres", &names).is_empty());
    }

    #[test]
    fn published_ports_are_read_once_per_port_and_protocol() {
        let binding = |ip: &str, port: &str| bollard::models::PortBinding {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        };
        let map = HashMap::from([
            (
                "80/tcp".to_owned(),
                Some(vec![binding("0.0.0.0", "18080"), binding("::", "18080")]),
            ),
            (
                "53/udp".to_owned(),
                Some(vec![binding("127.0.0.1", "5353")]),
            ),
            ("9000/tcp".to_owned(), None),
            ("7/weird".to_owned(), Some(vec![binding("0.0.0.0", "7")])),
            ("x/tcp".to_owned(), Some(vec![binding("0.0.0.0", "1")])),
        ]);
        let p = published_ports(&map);
        assert_eq!(
            p,
            vec![
                Published {
                    proto: 6,
                    host_port: 18080,
                    container_port: 80
                },
                Published {
                    proto: 17,
                    host_port: 5353,
                    container_port: 53
                },
            ]
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "abd"), 1);
        assert_eq!(edit_distance("abc", "ab"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}

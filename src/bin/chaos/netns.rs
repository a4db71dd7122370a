//! A network namespace for one agent, joined to the host by a veth pair, so that the
//! harness can cut that agent off the store (the link down) and let it back.
//!
//! Only the harness's own namespaces (`chaos-<pid>`) and links (`chv<pid>h`/`n`) are ever
//! touched. The agent reaches etcd, which listens on loopback only, through a TCP relay the
//! harness runs on the host end of the pair. Every namespace is removed on drop, from the
//! panic hook and on SIGINT (see [`remove_all`]).

use anyhow::{bail, Context as _};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Mutex;

/// Namespaces alive, for [`remove_all`].
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// One namespace with its veth pair and the relays into it.
pub struct Netns {
    pub name: String,
    host_link: String,
    host_ip: String,
    /// Relays to the store's endpoints, on the host end (stopped on drop).
    relays: Vec<tokio::task::JoinHandle<()>>,
    /// Where the relays listen: the store endpoints as the agent inside sees them.
    relay_addrs: Vec<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes namespaces a killed earlier run left behind: `chaos-<pid>` whose pid is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("chaos-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Removes every namespace this process made (the panic hook and SIGINT call it).
pub fn remove_all() {
    let names = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for name in names {
        let _ = ip(&["netns", "del", &name]);
    }
}

impl Netns {
    /// Creates the namespace and the pair (host end `10.213.X.1/30`, agent end `.2`), and
    /// one relay per store endpoint. Call inside the tokio runtime that runs the relays.
    pub async fn create(endpoints: &[String]) -> anyhow::Result<Netns> {
        let pid = std::process::id();
        let name = format!("chaos-{pid}");
        let (host_link, ns_link) = (format!("chv{pid}h"), format!("chv{pid}n"));
        let subnet = pid % 250;
        let (host_ip, ns_ip) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
        ip(&["netns", "add", &name])?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        let mut ns = Netns {
            name: name.clone(),
            host_link: host_link.clone(),
            host_ip: host_ip.clone(),
            relays: Vec::new(),
            relay_addrs: Vec::new(),
        };
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ])?;
        ip(&["link", "set", &ns_link, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_link,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_link, "up"])?;
        for endpoint in endpoints {
            let relay = ns.relay(endpoint).await?;
            ns.relays.push(relay);
        }
        Ok(ns)
    }

    /// The store endpoints as the agent inside sees them, in the order given to `create`.
    pub fn endpoints(&self) -> Vec<String> {
        self.relay_addrs.clone()
    }

    async fn relay(&mut self, target: &str) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(format!("{}:0", self.host_ip))
            .await
            .with_context(|| format!("cannot listen on {}", self.host_ip))?;
        let addr: SocketAddr = listener.local_addr()?;
        self.relay_addrs.push(addr.to_string());
        let target = target.to_string();
        Ok(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }))
    }

    /// Cuts the namespace off: the host end of the pair goes down.
    pub fn partition(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_link, "down"])
    }

    /// Joins it again.
    pub fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_link, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for r in &self.relays {
            r.abort();
        }
        // Deleting the namespace deletes its end of the pair, and with it the host end.
        let _ = ip(&["netns", "del", &self.name]);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| n != &self.name);
    }
}

//! The pod network: a node namespace with a bridge, and the pods' namespaces on veth pairs;
//! everything it made is removed on drop.

use super::*;

/// A node namespace with a bridge, and the pods hanging off it. Dropping it removes everything.
#[derive(Debug)]
pub struct PodNetwork {
    prefix: String,
    network: Ipv4Addr,
    prefix_len: u8,
    node: Pod,
    pods: Mutex<Vec<Pod>>,
    hosts: Hosts,
    log_dir: PathBuf,
    next_if: AtomicU32,
    /// Keep the log directory on drop (also kept when dropping during a panic).
    pub keep_logs: bool,
}

fn write_world_readable_dir(p: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl PodNetwork {
    /// Create the node namespace `<prefix>-node` with bridge `br0` holding the subnet's `.1`.
    /// `subnet` is (network address, prefix length), e.g. `(10.44.0.0, 24)`. Leftovers with the
    /// same prefix, and networks of dead processes, are removed first.
    pub fn create(prefix: &str, subnet: (Ipv4Addr, u8)) -> anyhow::Result<PodNetwork> {
        let (net, len) = subnet;
        if !(8..=30).contains(&len) {
            bail!("subnet prefix length {len} out of range 8..=30");
        }
        if prefix.is_empty() || prefix.len() > 40 || prefix.contains('/') {
            bail!("bad prefix {prefix:?}");
        }
        reap_orphans();
        cleanup_stale(prefix);
        let mask = u32::MAX << (32 - len);
        let network = Ipv4Addr::from(u32::from(net) & mask);
        let gateway = Ipv4Addr::from(u32::from(network) + 1);
        let node_ns = format!("{prefix}-node");
        let log_dir = std::env::temp_dir().join(format!("meshd-podnet-{prefix}"));
        let _ = fs::remove_dir_all(&log_dir);
        write_world_readable_dir(&log_dir)?;
        write_world_readable_dir(Path::new(MARKER_DIR))?;
        fs::write(
            Path::new(MARKER_DIR).join(prefix),
            std::process::id().to_string(),
        )?;
        let hosts: Hosts = Arc::new(RwLock::new(Vec::new()));
        let pn = PodNetwork {
            prefix: prefix.to_string(),
            network,
            prefix_len: len,
            node: Pod {
                name: "node".into(),
                netns: node_ns.clone(),
                ip: gateway,
                gateway,
                hosts: hosts.clone(),
                log_dir: log_dir.clone(),
            },
            pods: Mutex::new(Vec::new()),
            hosts,
            log_dir,
            next_if: AtomicU32::new(0),
            keep_logs: std::env::var_os("MESHD_KEEP_LOGS").is_some(),
        };
        // From here on, Drop cleans up whatever was created.
        ip(&["netns", "add", &node_ns])?;
        pn.write_etc(&node_ns)?;
        ip(&["-n", &node_ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &node_ns, "link", "add", BRIDGE, "type", "bridge"])?;
        // A bridge left to itself takes the lowest MAC among its ports, so the gateway's MAC
        // changed whenever a pod joined with a lower one; pods still sending to the old MAC lost
        // the SYNs of new connections to the gateway (Envoy's 1 s connect timeout to meshd hit,
        // its first access-log streams lost). Set by hand, the bridge keeps it.
        ip(&[
            "-n",
            &node_ns,
            "link",
            "set",
            BRIDGE,
            "address",
            &bridge_mac(gateway),
        ])?;
        ip(&[
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{gateway}/{len}"),
            "dev",
            BRIDGE,
        ])?;
        ip(&["-n", &node_ns, "link", "set", BRIDGE, "up"])?;
        Ok(pn)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge address (`.1`), where the node namespace listens.
    #[allow(clippy::misnamed_getters)]
    pub fn gateway(&self) -> Ipv4Addr {
        self.node.ip
    }

    /// The node namespace, as a [`Pod`] whose address is the gateway.
    pub fn node(&self) -> Pod {
        self.node.clone()
    }

    /// Directory holding the logs of processes spawned through pods of this network.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.pods.lock().unwrap().clone()
    }

    pub fn pod(&self, name: &str) -> Option<Pod> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// Add pod `<prefix>-<name>` with address `ip` (inside the subnet, not the gateway).
    pub fn add_pod(&self, name: &str, ip_addr: Ipv4Addr) -> anyhow::Result<Pod> {
        if !self.in_subnet(ip_addr) || ip_addr == self.node.ip {
            bail!(
                "{ip_addr} is not a pod address in {}/{}",
                self.network,
                self.prefix_len
            );
        }
        if name == "node" || name.is_empty() || name.contains('/') {
            bail!("bad pod name {name:?}");
        }
        if self.pod(name).is_some() {
            bail!("pod {name} exists");
        }
        let ns = format!("{}-{name}", self.prefix);
        let pod = Pod {
            name: name.to_string(),
            netns: ns.clone(),
            ip: ip_addr,
            gateway: self.node.ip,
            hosts: self.hosts.clone(),
            log_dir: self.log_dir.clone(),
        };
        let node = &self.node.netns;
        let host_if = format!("vp{}", self.next_if.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &ns])?;
        // Registered before configuring, so that a failure below still gets cleaned up.
        self.pods.lock().unwrap().push(pod.clone());
        self.write_etc(&ns)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", node, "link", "set", &host_if, "master", BRIDGE])?;
        ip(&["-n", node, "link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/{}", self.prefix_len),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &self.node.ip.to_string(),
        ])?;
        Ok(pod)
    }

    /// Replace the host entries (name → address) every pod resolves, e.g. Istio service hosts
    /// and short names mapped to service VIPs. Pods' own names are always included.
    pub fn set_hosts<S: AsRef<str>>(&self, entries: &[(S, Ipv4Addr)]) -> anyhow::Result<()> {
        *self.hosts.write().unwrap() = entries
            .iter()
            .map(|(n, ip)| (n.as_ref().to_string(), *ip))
            .collect();
        let mut all = vec![self.node.netns.clone()];
        all.extend(self.pods().into_iter().map(|p| p.netns));
        for ns in all {
            self.write_etc(&ns)?;
        }
        Ok(())
    }

    fn hosts_file(&self) -> String {
        let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
        s.push_str(&format!("{}\tnode\n", self.node.ip));
        for p in self.pods.lock().unwrap().iter() {
            s.push_str(&format!("{}\t{}\n", p.ip, p.name));
        }
        for (name, ip) in self.hosts.read().unwrap().iter() {
            s.push_str(&format!("{ip}\t{name}\n"));
        }
        s
    }

    /// `/etc/netns/<ns>/{hosts,resolv.conf}`, rewritten in place (the bind mounts of running
    /// processes keep seeing the file).
    fn write_etc(&self, ns: &str) -> anyhow::Result<()> {
        let dir = Path::new("/etc/netns").join(ns);
        write_world_readable_dir(&dir)?;
        let hosts = dir.join("hosts");
        fs::write(&hosts, self.hosts_file())
            .with_context(|| format!("writing {}", hosts.display()))?;
        fs::set_permissions(&hosts, fs::Permissions::from_mode(0o644))?;
        let resolv = dir.join("resolv.conf");
        if !resolv.exists() {
            fs::write(&resolv, "")?;
            fs::set_permissions(&resolv, fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// Remove everything now (also done on drop).
    pub fn destroy(&self) {
        let pods: Vec<Pod> = std::mem::take(&mut *self.pods.lock().unwrap());
        for p in pods {
            delete_netns(&p.netns);
        }
        delete_netns(&self.node.netns);
        // Anything else with our prefix (a pod whose creation failed half-way).
        cleanup_stale(&self.prefix);
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.destroy();
        if self.keep_logs || std::thread::panicking() {
            eprintln!(
                "podnet {}: logs kept in {}",
                self.prefix,
                self.log_dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// The bridge's MAC: locally administered, the gateway's address in its last four bytes.
pub(super) fn bridge_mac(gateway: Ipv4Addr) -> String {
    let [a, b, c, d] = gateway.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

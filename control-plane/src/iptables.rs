//! `meshd init-iptables`: Istio-compatible traffic-capture rules (nat table, REDIRECT mode).
//!
//! The rules mirror what `istio-iptables` generates, with the same chain names
//! (`ISTIO_INBOUND`, `ISTIO_REDIRECT`, `ISTIO_IN_REDIRECT`, `ISTIO_OUTPUT`), the same flags and
//! the same loopback handling:
//!
//! * traffic from `127.0.0.6` (Envoy's inbound passthrough bind address) leaving via `lo` is not
//!   captured;
//! * the proxy (uid/gid `-u`/`-g`) connecting to a non-127.0.0.1 address over `lo` (an app calling
//!   its own service VIP, which Envoy resolved to its own pod IP) is sent to the inbound capture
//!   port, so the call goes app → Envoy (client) → Envoy (server) → app;
//! * any other traffic over `lo` from a non-proxy uid is left alone (app → app via localhost or
//!   its own pod IP);
//! * everything else from the proxy uid/gid is left alone (no loops);
//! * traffic to 127.0.0.1 is left alone.
//!
//! IPv4 only; `iptables-restore --noflush` applies it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Ports that are never captured inbound (Envoy's Prometheus, health and agent ports).
pub const ALWAYS_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];
/// Istio's HBONE port, never captured (as istio-iptables does).
pub const HBONE_PORT: u16 = 15008;

pub const CHAIN_INBOUND: &str = "ISTIO_INBOUND";
pub const CHAIN_REDIRECT: &str = "ISTIO_REDIRECT";
pub const CHAIN_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const CHAIN_OUTPUT: &str = "ISTIO_OUTPUT";
const ALL_CHAINS: [&str; 4] = [
    CHAIN_INBOUND,
    CHAIN_REDIRECT,
    CHAIN_IN_REDIRECT,
    CHAIN_OUTPUT,
];

/// The flags of `istio-iptables`, as far as meshd supports them.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct InitIptablesArgs {
    /// Port to which all outbound TCP traffic is redirected (Envoy's outbound capture port).
    #[arg(short = 'p', long = "envoy-port", default_value = "15001")]
    pub envoy_port: u16,
    /// Port to which all inbound TCP traffic is redirected.
    #[arg(short = 'z', long = "inbound-capture-port", default_value = "15006")]
    pub inbound_capture_port: u16,
    /// User id(s) of the proxy, comma-separated; their traffic is not captured.
    #[arg(short = 'u', long = "proxy-uid", default_value = "1337")]
    pub proxy_uid: String,
    /// Group id(s) of the proxy, comma-separated; defaults to the proxy uid.
    #[arg(short = 'g', long = "proxy-gid")]
    pub proxy_gid: Option<String>,
    /// Inbound interception mode; only REDIRECT is supported.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT"
    )]
    pub inbound_interception_mode: String,
    /// Outbound IP ranges (CIDRs, comma-separated) to capture; `*` for all, empty for none.
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "*")]
    pub include_ip_ranges: String,
    /// Outbound IP ranges (CIDRs, comma-separated) never to capture.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    pub exclude_ip_ranges: String,
    /// Inbound ports to capture, comma-separated; `*` for all, empty for none.
    #[arg(short = 'b', long = "istio-inbound-ports", default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports not to capture when `-b '*'` (15090, 15021, 15020 are always excluded).
    #[arg(short = 'd', long = "istio-local-exclude-ports", default_value = "")]
    pub inbound_ports_exclude: String,
    /// Outbound ports never to capture, comma-separated.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    pub outbound_ports_exclude: String,
    /// Outbound ports to capture regardless of destination IP, comma-separated.
    #[arg(short = 'q', long = "istio-include-outbound-ports", default_value = "")]
    pub outbound_ports_include: String,
    /// Print the rules instead of applying them.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

impl Default for InitIptablesArgs {
    fn default() -> Self {
        Self {
            envoy_port: 15001,
            inbound_capture_port: 15006,
            proxy_uid: "1337".into(),
            proxy_gid: None,
            inbound_interception_mode: "REDIRECT".into(),
            include_ip_ranges: "*".into(),
            exclude_ip_ranges: String::new(),
            inbound_ports: "*".into(),
            inbound_ports_exclude: String::new(),
            outbound_ports_exclude: String::new(),
            outbound_ports_include: String::new(),
            dry_run: false,
        }
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_ports(list: &str, flag: &str) -> anyhow::Result<Vec<u16>> {
    split(list)
        .into_iter()
        .map(|p| {
            p.parse::<u16>()
                .with_context(|| format!("{flag}: invalid port {p:?}"))
        })
        .collect()
}

fn parse_ids(list: &str, flag: &str) -> anyhow::Result<Vec<u32>> {
    let ids: Vec<u32> = split(list)
        .into_iter()
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("{flag}: invalid id {p:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    if ids.is_empty() {
        bail!("{flag}: at least one id is required");
    }
    Ok(ids)
}

/// An IPv4 CIDR in canonical form (`a.b.c.d/n`, host bits cleared).
fn parse_cidr(s: &str, flag: &str) -> anyhow::Result<String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .with_context(|| format!("{flag}: invalid prefix length in {s:?}"))?,
        ),
        None => (s, 32),
    };
    let ip: std::net::Ipv4Addr = addr.parse().with_context(|| {
        format!("{flag}: invalid IPv4 address in {s:?} (only IPv4 is supported)")
    })?;
    if len > 32 {
        bail!("{flag}: prefix length out of range in {s:?}");
    }
    let mask: u32 = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = std::net::Ipv4Addr::from(u32::from(ip) & mask);
    Ok(format!("{net}/{len}"))
}

/// Outbound include ranges: `*` (everything) or a list of CIDRs.
enum Include {
    All,
    Cidrs(Vec<String>),
}

fn parse_include(list: &str) -> anyhow::Result<Include> {
    let items = split(list);
    if items.iter().any(|i| i == "*") {
        return Ok(Include::All);
    }
    Ok(Include::Cidrs(
        items
            .iter()
            .map(|c| parse_cidr(c, "-i"))
            .collect::<anyhow::Result<_>>()?,
    ))
}

/// The rules, in `iptables-restore` format for the nat table (as `istio-iptables --dry-run`
/// would print them for IPv4).
pub fn build_rules(args: &InitIptablesArgs) -> anyhow::Result<String> {
    if !args
        .inbound_interception_mode
        .eq_ignore_ascii_case("REDIRECT")
    {
        bail!(
            "-m {}: only the REDIRECT inbound interception mode is supported",
            args.inbound_interception_mode
        );
    }
    let uids = parse_ids(&args.proxy_uid, "-u")?;
    let gids = match &args.proxy_gid {
        Some(g) if !g.trim().is_empty() => parse_ids(g, "-g")?,
        _ => uids.clone(),
    };
    let include = parse_include(&args.include_ip_ranges)?;
    let exclude: Vec<String> = split(&args.exclude_ip_ranges)
        .iter()
        .map(|c| parse_cidr(c, "-x"))
        .collect::<anyhow::Result<_>>()?;
    let inbound_all = split(&args.inbound_ports).iter().any(|p| p == "*");
    let inbound_ports = if inbound_all {
        Vec::new()
    } else {
        parse_ports(&args.inbound_ports, "-b")?
    };
    let mut inbound_exclude = parse_ports(&args.inbound_ports_exclude, "-d")?;
    for p in ALWAYS_EXCLUDED_INBOUND_PORTS {
        if !inbound_exclude.contains(&p) {
            inbound_exclude.push(p);
        }
    }
    let outbound_exclude = parse_ports(&args.outbound_ports_exclude, "-o")?;
    let outbound_include = parse_ports(&args.outbound_ports_include, "-q")?;

    let mut r = Vec::<String>::new();
    // HBONE traffic is never captured.
    r.push(format!(
        "-A {CHAIN_INBOUND} -p tcp --dport {HBONE_PORT} -j RETURN"
    ));
    r.push(format!(
        "-A {CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.envoy_port
    ));
    r.push(format!(
        "-A {CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_capture_port
    ));

    // Inbound.
    if inbound_all || !inbound_ports.is_empty() {
        r.push(format!("-A PREROUTING -p tcp -j {CHAIN_INBOUND}"));
        if inbound_all {
            for p in &inbound_exclude {
                r.push(format!("-A {CHAIN_INBOUND} -p tcp --dport {p} -j RETURN"));
            }
            r.push(format!("-A {CHAIN_INBOUND} -p tcp -j {CHAIN_IN_REDIRECT}"));
        } else {
            for p in &inbound_ports {
                r.push(format!(
                    "-A {CHAIN_INBOUND} -p tcp --dport {p} -j {CHAIN_IN_REDIRECT}"
                ));
            }
        }
    }

    // Outbound.
    r.push(format!("-A OUTPUT -p tcp -j {CHAIN_OUTPUT}"));
    for p in &outbound_exclude {
        r.push(format!("-A {CHAIN_OUTPUT} -p tcp --dport {p} -j RETURN"));
    }
    // Inbound passthrough connections bound to 127.0.0.6.
    r.push(format!("-A {CHAIN_OUTPUT} -s 127.0.0.6/32 -o lo -j RETURN"));
    for (kind, ids) in [("uid", &uids), ("gid", &gids)] {
        for id in ids {
            // Proxy → own pod address over lo (app calling its own VIP): inbound capture.
            r.push(format!(
                "-A {CHAIN_OUTPUT} ! -d 127.0.0.1/32 -o lo -p tcp ! --dport {HBONE_PORT} -m owner --{kind}-owner {id} -j {CHAIN_IN_REDIRECT}"
            ));
            // App → app over lo: left alone.
            r.push(format!(
                "-A {CHAIN_OUTPUT} -o lo -m owner ! --{kind}-owner {id} -j RETURN"
            ));
            // The proxy's own outbound traffic: never captured again.
            r.push(format!(
                "-A {CHAIN_OUTPUT} -m owner --{kind}-owner {id} -j RETURN"
            ));
        }
    }
    r.push(format!("-A {CHAIN_OUTPUT} -d 127.0.0.1/32 -j RETURN"));
    for cidr in &exclude {
        r.push(format!("-A {CHAIN_OUTPUT} -d {cidr} -j RETURN"));
    }
    for p in &outbound_include {
        r.push(format!(
            "-A {CHAIN_OUTPUT} -p tcp --dport {p} -j {CHAIN_REDIRECT}"
        ));
    }
    match &include {
        Include::All => r.push(format!("-A {CHAIN_OUTPUT} -j {CHAIN_REDIRECT}")),
        Include::Cidrs(cidrs) => {
            for cidr in cidrs {
                r.push(format!("-A {CHAIN_OUTPUT} -d {cidr} -j {CHAIN_REDIRECT}"));
            }
        }
    }

    let mut out = String::from("* nat\n");
    for chain in ALL_CHAINS {
        let _ = writeln!(out, "-N {chain}");
    }
    for rule in r {
        out.push_str(&rule);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    Ok(out)
}

/// Rules that undo a previous run (jumps from the built-in chains, then the Istio chains), so
/// that `init-iptables` can be re-run in the same namespace. Best effort: every command may fail
/// when there is nothing to remove.
fn cleanup() {
    for (chain, target) in [("PREROUTING", CHAIN_INBOUND), ("OUTPUT", CHAIN_OUTPUT)] {
        // Delete every jump (there may be several after repeated failed runs).
        for _ in 0..16 {
            let ok = Command::new("iptables")
                .args(["-t", "nat", "-D", chain, "-p", "tcp", "-j", target])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                break;
            }
        }
    }
    for op in ["-F", "-X"] {
        for chain in ALL_CHAINS {
            let _ = Command::new("iptables")
                .args(["-t", "nat", op, chain])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Apply rules produced by [`build_rules`] with `iptables-restore --noflush`.
pub fn apply_rules(rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `iptables-restore --noflush` (is iptables installed?)")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())
        .context("writing rules to iptables-restore")?;
    let out = child
        .wait_with_output()
        .context("waiting for iptables-restore")?;
    if !out.status.success() {
        bail!(
            "`iptables-restore --noflush` failed ({}): stdout: {} stderr: {}\nrules:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            rules
        );
    }
    Ok(())
}

/// `meshd init-iptables`.
pub fn run(args: &InitIptablesArgs) -> anyhow::Result<()> {
    let rules = build_rules(args)?;
    if args.dry_run {
        print!("{rules}");
        return Ok(());
    }
    cleanup();
    apply_rules(&rules)?;
    println!(
        "meshd init-iptables: capture rules installed (outbound → {}, inbound → {}, proxy uid {})",
        args.envoy_port, args.inbound_capture_port, args.proxy_uid
    );
    Ok(())
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;

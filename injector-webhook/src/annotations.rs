//! The pod annotations the injector honours, validated: a bad value is a clear error, never a
//! string passed on blindly.

use std::collections::BTreeMap;
use std::time::Duration;

pub const INJECT: &str = "sidecar.istio.io/inject";
pub const STATUS: &str = "sidecar.istio.io/status";
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
pub const REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
pub const READINESS_APPLICATION_PORTS: &str = "readiness.status.sidecar.istio.io/applicationPorts";
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
pub const TEMPLATES: &str = "inject.istio.io/templates";
/// Namespace or pod label choosing the control-plane revision.
pub const REVISION_LABEL: &str = "istio.io/rev";

/// Istio's proxy variable choosing the xDS protocol (Delta unless `false`).
pub const DELTA_XDS_ENV: &str = "ISTIO_DELTA_XDS";

pub const NAMESPACE_LABEL: &str = "istio-injection";
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// What meshd takes from `proxy.istio.io/config` (a ProxyConfig, YAML or JSON, as Istio reads
/// it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfigOverrides {
    /// `proxyMetadata.ISTIO_DELTA_XDS`: the xDS protocol of the pod's sidecar.
    pub delta_xds: Option<bool>,
    /// `holdApplicationUntilProxyStarts`.
    pub hold_application: Option<bool>,
    /// `terminationDrainDuration`: how long the sidecar drains before Envoy gets SIGTERM.
    pub termination_drain: Option<Duration>,
    /// `proxyStatsMatcher`: which of Envoy's stats the sidecar records.
    pub stats_matcher: Option<crate::stats_matcher::StatsInclusion>,
}

/// Reads `proxy.istio.io/config`. Other fields and variables are reported as ignored (meshd has
/// no agent to give them to); a value that is not a ProxyConfig, or a flag that is not a
/// boolean, is an error.
pub fn proxy_config(
    annotations: &BTreeMap<String, String>,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> ProxyConfigOverrides {
    let Some(text) = annotations.get(PROXY_CONFIG) else {
        return ProxyConfigOverrides::default();
    };
    match serde_yaml::from_str(text) {
        Ok(config) => read_proxy_config(
            config,
            &format!("annotation {PROXY_CONFIG}"),
            errors,
            warnings,
        ),
        Err(e) => {
            errors.push(format!("annotation {PROXY_CONFIG}: not YAML: {e}"));
            ProxyConfigOverrides::default()
        }
    }
}

/// Reads a ProxyConfig (`at` names where it came from: the pod's annotation, or MeshConfig's
/// `defaultConfig`), with the rules of [`proxy_config`].
pub fn read_proxy_config(
    config: serde_yaml::Value,
    at: &str,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> ProxyConfigOverrides {
    let mut out = ProxyConfigOverrides::default();
    let fields = match config {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => return out,
        _ => {
            errors.push(format!("{at}: not a ProxyConfig mapping"));
            return out;
        }
    };
    let yaml_bool = |value: &serde_yaml::Value| match value {
        serde_yaml::Value::Bool(b) => Some(*b),
        serde_yaml::Value::String(s) => parse_bool(s),
        _ => None,
    };
    let shown = |value: &serde_yaml::Value| {
        serde_yaml::to_string(value)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    for (key, value) in fields {
        let key = key.as_str().unwrap_or("?").to_string();
        if key == "holdApplicationUntilProxyStarts" {
            match yaml_bool(&value) {
                Some(b) => out.hold_application = Some(b),
                None => errors.push(format!(
                    "{at}: holdApplicationUntilProxyStarts: `{}` is not a boolean",
                    shown(&value)
                )),
            }
            continue;
        }
        if key == "terminationDrainDuration" {
            match value.as_str().and_then(proto_duration) {
                Some(d) => out.termination_drain = Some(d),
                None => errors.push(format!(
                    "{at}: terminationDrainDuration: `{}` is not a duration (`5s`, `1.5s`)",
                    shown(&value)
                )),
            }
            continue;
        }
        if key == "proxyStatsMatcher" {
            match crate::stats_matcher::from_proxy_config(
                value,
                &format!("{at}: proxyStatsMatcher"),
            ) {
                Ok(m) => out.stats_matcher = Some(m),
                Err(e) => errors.push(e),
            }
            continue;
        }
        if key != "proxyMetadata" {
            warnings.push(format!(
                "{at}: field `{key}` is not supported by meshd; ignored"
            ));
            continue;
        }
        let serde_yaml::Value::Mapping(vars) = value else {
            errors.push(format!("{at}: proxyMetadata is not a map of strings"));
            continue;
        };
        for (name, value) in vars {
            let name = name.as_str().unwrap_or("?");
            if name != DELTA_XDS_ENV {
                warnings.push(format!(
                    "{at}: proxyMetadata.{name} is not used by meshd; ignored"
                ));
                continue;
            }
            match value.as_str().and_then(parse_bool) {
                Some(b) => out.delta_xds = Some(b),
                None => errors.push(format!(
                    "{at}: proxyMetadata.{DELTA_XDS_ENV}: `{}` is not a boolean",
                    shown(&value)
                )),
            }
        }
    }
    out
}

/// A `google.protobuf.Duration` in its JSON form, as ProxyConfig's YAML holds one: seconds with
/// at most nine fraction digits and an `s` (`5s`, `1.5s`), between 0 and one day (a drain of a
/// day is already past any pod's grace period).
pub fn proto_duration(v: &str) -> Option<Duration> {
    let number = v.trim().strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty()
        || whole.len() > 5
        || fraction.len() > 9
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    let d = Duration::new(secs, nanos);
    (d <= Duration::from_secs(86_400)).then_some(d)
}

/// Go's `strconv.ParseBool`, which Istio uses for its boolean annotations.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The value of a quantity [`is_quantity`] accepts, in base units (cores, bytes), for comparing
/// a request with its limit.
pub fn quantity_value(v: &str) -> Option<f64> {
    if !is_quantity(v) {
        return None;
    }
    let (sign, s) = match v.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, v.strip_prefix('+').unwrap_or(v)),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let n: f64 = num.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => 10f64.powi(exp[1..].parse::<i32>().ok()?.clamp(-400, 400)),
    };
    Some(sign * n * scale)
}

/// A Kubernetes resource quantity (`100m`, `1.5Gi`, `2`, `1e3`).
pub fn is_quantity(v: &str) -> bool {
    if v.is_empty() || v.len() > 64 {
        return false;
    }
    let s = v.strip_prefix(['+', '-']).unwrap_or(v);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num.matches('.').count() > 1 || !num.chars().any(|c| c.is_ascii_digit()) {
        return false;
    }
    const SUFFIXES: [&str; 16] = [
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    // Decimal exponent: e3, E-2, e+6.
    if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        return !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit());
    }
    false
}

fn split(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Comma-separated CIDRs (or bare addresses); `*` allowed when `star` is.
pub fn cidr_list(v: &str, star: bool) -> Result<String, String> {
    if star && v.trim() == "*" {
        return Ok("*".into());
    }
    let mut out = Vec::new();
    for item in split(v) {
        let ok = item.parse::<ipnet::IpNet>().is_ok() || item.parse::<std::net::IpAddr>().is_ok();
        if !ok {
            return Err(format!("`{item}` is not a CIDR"));
        }
        out.push(item);
    }
    Ok(out.join(","))
}

/// Comma-separated ports 1–65535; `*` allowed when `star` is.
pub fn port_list(v: &str, star: bool) -> Result<String, String> {
    if star && v.trim() == "*" {
        return Ok("*".into());
    }
    let mut out = Vec::new();
    for item in split(v) {
        match item.parse::<u16>() {
            Ok(p) if p > 0 => out.push(p.to_string()),
            _ => return Err(format!("`{item}` is not a port (1-65535)")),
        }
    }
    Ok(out.join(","))
}

/// The traffic-capture settings of one pod: `meshd init-iptables` flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub include_outbound_ip_ranges: String,
    pub exclude_outbound_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub exclude_outbound_ports: String,
    pub include_outbound_ports: String,
}

impl Capture {
    /// `meshd init-iptables` arguments (istio-iptables' flags).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "init-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        // -i and -b always (their defaults are `*`); the rest only when set.
        a.extend(["-i".into(), self.include_outbound_ip_ranges.clone()]);
        a.extend(["-b".into(), self.include_inbound_ports.clone()]);
        for (flag, v) in [
            ("-x", &self.exclude_outbound_ip_ranges),
            ("-d", &self.exclude_inbound_ports),
            ("-o", &self.exclude_outbound_ports),
            ("-q", &self.include_outbound_ports),
        ] {
            if !v.is_empty() {
                a.extend([flag.to_string(), v.clone()]);
            }
        }
        a
    }
}

/// Reads and validates the capture annotations; every problem is reported.
pub fn capture(annotations: &BTreeMap<String, String>, errors: &mut Vec<String>) -> Capture {
    let mut get = |key: &str, default: &str, parse: &dyn Fn(&str) -> Result<String, String>| {
        match annotations.get(key) {
            None => default.to_string(),
            Some(v) => parse(v).unwrap_or_else(|e| {
                errors.push(format!("annotation {key}: {e}"));
                default.to_string()
            }),
        }
    };
    Capture {
        include_outbound_ip_ranges: get(INCLUDE_OUTBOUND_IP_RANGES, "*", &|v| cidr_list(v, true)),
        exclude_outbound_ip_ranges: get(EXCLUDE_OUTBOUND_IP_RANGES, "", &|v| cidr_list(v, false)),
        include_inbound_ports: get(INCLUDE_INBOUND_PORTS, "*", &|v| port_list(v, true)),
        exclude_inbound_ports: get(EXCLUDE_INBOUND_PORTS, "", &|v| port_list(v, false)),
        exclude_outbound_ports: get(EXCLUDE_OUTBOUND_PORTS, "", &|v| port_list(v, false)),
        include_outbound_ports: get(INCLUDE_OUTBOUND_PORTS, "", &|v| port_list(v, false)),
    }
}

/// An image reference: no whitespace or control characters, sane length.
pub fn is_image(v: &str) -> bool {
    !v.is_empty() && v.len() <= 512 && !v.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "100m", "2", "1.5Gi", "128Mi", "2000m", "1e3", "0.5", "+1", "1E-2", "64k",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in [
            "", "m", "1.2.3", "abc", "10 m", "1Gib", "1e", "--1", "1m;rm",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn lists() {
        assert_eq!(cidr_list("*", true).unwrap(), "*");
        assert!(cidr_list("*", false).is_err());
        assert_eq!(
            cidr_list(" 10.0.0.0/8, 192.168.1.1 ", false).unwrap(),
            "10.0.0.0/8,192.168.1.1"
        );
        assert!(cidr_list("10.0.0.0/33", false).is_err());
        assert_eq!(port_list("8080, 9090", false).unwrap(), "8080,9090");
        assert!(port_list("0", false).is_err());
        assert!(port_list("70000", false).is_err());
        assert!(port_list("80;ls", false).is_err());
    }

    #[test]
    fn capture_args() {
        let mut errors = vec![];
        let mut a = BTreeMap::new();
        a.insert(EXCLUDE_OUTBOUND_PORTS.to_string(), "5432".to_string());
        let c = capture(&a, &mut errors);
        assert!(errors.is_empty());
        let args = c.args().join(" ");
        assert_eq!(
            args,
            "init-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i * -b * -o 5432"
        );
    }
}

//! A Gateway server on its own: its protocol, `bind`, and TLS mode with the files or credential
//! the mode needs (the shapes meshd serves; others are reported naming the field); and `caCrl`,
//! which DestinationRule TLS shares.

use super::Check;

/// `caCrl` names a CRL file checked beside the `caCertificates` file; a credential's CRL is the
/// Secret's `ca.crl` key.
pub(super) fn crl_with_ca(at: &str, credential: bool, ca_file: bool) -> Check {
    if credential {
        return Err(format!(
            "{at}.tls.caCrl: with credentialName the CRL is the Secret's `ca.crl` key, not a file"
        ));
    }
    if !ca_file {
        return Err(format!(
            "{at}.tls.caCrl: a CRL is checked with caCertificates; give both"
        ));
    }
    Ok(())
}

/// The Gateway server shapes meshd serves; the others are reported.
pub(super) fn server(at: &str, s: &crate::networking::Server) -> Check {
    let protocol = s.port.protocol.to_ascii_uppercase();
    if !matches!(
        protocol.as_str(),
        "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "TLS" | "TCP"
    ) {
        return Err(format!(
            "{at}.port.protocol {} is not supported (HTTP, HTTPS, HTTP2, GRPC, TLS, TCP)",
            s.port.protocol
        ));
    }
    if let Some(bind) = &s.bind {
        if let Some(path) = bind.strip_prefix("unix://") {
            if !super::socket_path(path) {
                return Err(format!(
                    "{at}.bind: `{bind}` is not a unix socket (unix:///absolute/path or unix://@abstract)"
                ));
            }
        } else if bind.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "{at}.bind: `{bind}` is not an IP address (x.x.x.x, an IPv6 address, or unix://path)"
            ));
        }
    }
    let tls = s.tls.as_ref();
    let mode = tls
        .and_then(|t| t.mode.as_deref())
        .map(str::to_ascii_uppercase);
    let credential = tls.is_some_and(|t| t.credential_name.is_some());
    if credential
        && tls.is_some_and(|t| {
            t.server_certificate.is_some() || t.private_key.is_some() || t.ca_certificates.is_some()
        })
    {
        return Err(format!(
            "{at}.tls: give either credentialName or the certificate files, not both"
        ));
    }
    if let Some(t) = tls
        && t.ca_crl.is_some()
    {
        crl_with_ca(at, credential, t.ca_certificates.is_some())?;
    }
    let files = credential
        || tls.is_some_and(|t| t.server_certificate.is_some() && t.private_key.is_some());
    match mode.as_deref() {
        None if protocol == "HTTPS" && !files => Err(format!(
            "{at}: an HTTPS server needs tls (mode SIMPLE with credentialName, or serverCertificate and privateKey)"
        )),
        None if protocol == "TLS" => Err(format!(
            "{at}: a TLS server needs tls.mode (PASSTHROUGH, AUTO_PASSTHROUGH, or a mode that terminates TLS: SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL)"
        )),
        Some("ISTIO_MUTUAL") if protocol == "TCP" => Err(format!(
            "{at}.tls: ISTIO_MUTUAL on a TCP server: a server that terminates TLS has protocol TLS (or HTTPS)"
        )),
        None | Some("ISTIO_MUTUAL") => Ok(()),
        Some(m @ ("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")) if !files => Err(format!(
            "{at}.tls: mode {m} needs credentialName, or serverCertificate and privateKey"
        )),
        Some(m @ ("MUTUAL" | "OPTIONAL_MUTUAL"))
            if !credential && tls.and_then(|t| t.ca_certificates.as_ref()).is_none() =>
        {
            Err(format!(
                "{at}.tls: mode {m} needs caCertificates to verify clients"
            ))
        }
        Some(m @ ("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")) if protocol == "TCP" => Err(format!(
            "{at}.tls: mode {m} on a TCP server: a server that terminates TLS has protocol TLS (or HTTPS)"
        )),
        Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") => Ok(()),
        Some("PASSTHROUGH" | "AUTO_PASSTHROUGH") if protocol == "TLS" => Ok(()),
        Some(m @ ("PASSTHROUGH" | "AUTO_PASSTHROUGH")) => {
            Err(format!("{at}.tls: {m} needs protocol TLS"))
        }
        Some(other) => Err(format!(
            "{at}.tls.mode {other} is not supported (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL, PASSTHROUGH, AUTO_PASSTHROUGH)"
        )),
    }
}

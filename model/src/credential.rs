//! TLS credentials for Gateway servers' `credentialName`, read the way Istio reads them from a
//! Kubernetes Secret in the gateway workload's namespace: `tls.crt` + `tls.key` (type
//! `kubernetes.io/tls`) or `cert` + `key` (generic), with the CA for MUTUAL in `ca.crt` /
//! `cacert` of the same Secret or of a Secret named `<name>-cacert`. In Kubernetes mode they come
//! from the API server; in file mode from `kind: Secret` documents among the config files.

use crate::SourcePos;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fmt;

/// One Secret's TLS material (PEM). Never printed: `Debug` shows which parts are present.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsCredential {
    pub cert_chain: Option<String>,
    pub private_key: Option<String>,
    pub ca_cert: Option<String>,
    /// Revoked certificates (`ca.crl`, PEM), checked with `ca_cert`.
    pub ca_crl: Option<String>,
}

impl fmt::Debug for TlsCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCredential")
            .field("cert_chain", &self.cert_chain.as_ref().map(|_| "<pem>"))
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "<pem>"))
            .field("ca_crl", &self.ca_crl.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// A credential with where it was defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub namespace: String,
    pub name: String,
    pub source: SourcePos,
    pub tls: TlsCredential,
}

fn pem(key: &str, bytes: &[u8], certificate: bool) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{key} is not text (PEM)"))?;
    let marker = if certificate {
        "-----BEGIN CERTIFICATE-----"
    } else {
        "-----BEGIN "
    };
    if !text.contains(marker) {
        return Err(format!(
            "{key} holds no PEM {}",
            if certificate { "certificate" } else { "block" }
        ));
    }
    Ok(text.to_string())
}

fn crl_pem(bytes: &[u8]) -> Result<String, String> {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN X509 CRL-----") => Ok(text.to_string()),
        _ => Err("ca.crl holds no PEM CRL (-----BEGIN X509 CRL-----)".into()),
    }
}

/// The TLS credential in a Secret's (decoded) data; `Ok(None)` when the Secret holds none of the
/// keys (not a credential: service-account tokens, Helm releases…).
pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Option<TlsCredential>, String> {
    let pick = |a: &str, b: &str| {
        data.get(a)
            .map(|v| (a.to_string(), v))
            .or_else(|| data.get(b).map(|v| (b.to_string(), v)))
    };
    let cert = pick("tls.crt", "cert");
    let key = pick("tls.key", "key");
    let ca = pick("ca.crt", "cacert");
    let crl = data.get("ca.crl");
    if cert.is_none() && key.is_none() && ca.is_none() {
        return Ok(None);
    }
    let tls = TlsCredential {
        cert_chain: cert.as_ref().map(|(k, v)| pem(k, v, true)).transpose()?,
        private_key: key.as_ref().map(|(k, v)| pem(k, v, false)).transpose()?,
        ca_cert: ca.as_ref().map(|(k, v)| pem(k, v, true)).transpose()?,
        ca_crl: crl.map(|v| crl_pem(v.as_slice())).transpose()?,
    };
    if tls.ca_crl.is_some() && tls.ca_cert.is_none() {
        return Err("has ca.crl but no CA (ca.crt or cacert) to check it with".into());
    }
    match (&tls.cert_chain, &tls.private_key) {
        (Some(_), None) => Err("has a certificate but no private key (tls.key or key)".into()),
        (None, Some(_)) => Err("has a private key but no certificate (tls.crt or cert)".into()),
        _ => Ok(Some(tls)),
    }
}

/// A `kind: Secret` document of a config file: `data` (base64) and `stringData` (text, wins),
/// as the API server merges them.
pub fn from_secret_document(value: &serde_json::Value) -> Result<Option<TlsCredential>, String> {
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let as_map = |field: &str| -> Result<Vec<(String, String)>, String> {
        match value.get(field) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(v) => Ok((k.clone(), v.to_string())),
                    None => Err(format!("{field} must map names to strings")),
                })
                .collect(),
            Some(_) => Err(format!("{field} must be a map")),
        }
    };
    for (k, v) in as_map("data")? {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.split_whitespace().collect::<String>())
            .map_err(|e| format!("data.{k} is not base64: {e}"))?;
        data.insert(k, bytes);
    }
    for (k, v) in as_map("stringData")? {
        data.insert(k, v.into_bytes());
    }
    from_secret_data(&data)
}

/// SDS name of a credential's certificate and key (Istio's).
pub fn sds_name(credential_name: &str) -> String {
    format!("kubernetes://{credential_name}")
}

/// SDS name of a credential's CA (MUTUAL).
pub fn sds_ca_name(credential_name: &str) -> String {
    format!("kubernetes://{credential_name}-cacert")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn tls_and_generic_layouts() {
        let t = from_secret_data(&data(&[
            ("tls.crt", CERT),
            ("tls.key", KEY),
            ("ca.crt", CERT),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(t.cert_chain.as_deref(), Some(CERT));
        assert_eq!(t.ca_cert.as_deref(), Some(CERT));
        let g = from_secret_data(&data(&[("cert", CERT), ("key", KEY)]))
            .unwrap()
            .unwrap();
        assert_eq!(g.private_key.as_deref(), Some(KEY));
        assert_eq!(g.ca_cert, None);
        let ca_only = from_secret_data(&data(&[("cacert", CERT)]))
            .unwrap()
            .unwrap();
        assert_eq!(ca_only.cert_chain, None);
        assert_eq!(ca_only.ca_cert.as_deref(), Some(CERT));
    }

    #[test]
    fn not_a_credential_and_broken_ones() {
        assert_eq!(from_secret_data(&data(&[("token", "abc")])), Ok(None));
        let e = from_secret_data(&data(&[("tls.crt", CERT)])).unwrap_err();
        assert!(e.contains("no private key"), "{e}");
        let e = from_secret_data(&data(&[("tls.crt", "hello"), ("tls.key", KEY)])).unwrap_err();
        assert!(e.contains("tls.crt holds no PEM certificate"), "{e}");
    }

    #[test]
    fn ca_crl_is_read_beside_the_ca() {
        const CRL: &str = "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n";
        let t = from_secret_data(&data(&[("ca.crt", CERT), ("ca.crl", CRL)]))
            .unwrap()
            .unwrap();
        assert_eq!(t.ca_crl.as_deref(), Some(CRL));
        let e = from_secret_data(&data(&[
            ("tls.crt", CERT),
            ("tls.key", KEY),
            ("ca.crl", CRL),
        ]))
        .unwrap_err();
        assert!(e.contains("ca.crl but no CA"), "{e}");
        let e = from_secret_data(&data(&[("ca.crt", CERT), ("ca.crl", "x")])).unwrap_err();
        assert!(e.contains("ca.crl holds no PEM CRL"), "{e}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let t = TlsCredential {
            cert_chain: Some(CERT.into()),
            private_key: Some(KEY.into()),
            ca_cert: None,
            ca_crl: None,
        };
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("MIIE") && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn documents_with_data_and_string_data() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(CERT);
        let doc = crate::parse::yaml::to_json(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: c}}\ntype: kubernetes.io/tls\n\
             data:\n  tls.crt: {b64}\nstringData:\n  tls.key: |\n    -----BEGIN PRIVATE KEY-----\n    MIIE\n    -----END PRIVATE KEY-----\n"
        ))
        .unwrap();
        let t = from_secret_document(&doc).unwrap().unwrap();
        assert_eq!(t.cert_chain.as_deref(), Some(CERT));
        assert!(t.private_key.unwrap().contains("MIIE"));
        let bad = crate::parse::yaml::to_json("kind: Secret\ndata:\n  tls.crt: '%%%'\n").unwrap();
        let e = from_secret_document(&bad).unwrap_err();
        assert!(e.contains("data.tls.crt is not base64"), "{e}");
    }
}

//! `meshd-load --ca-rate`: the CA's rate through meshd's real paths next to the same crates'
//! raw rate, in one run on one machine. Raw: `meshd-ca` in this process generating a key and
//! signing (`issue_workload`, what SDS does per new identity) and signing a CSR (`sign_csr`, what
//! CreateCertificate does), on as many threads as there are cores. Real: a burst of P new
//! proxies all at once, each on its own connection with its own credential — SDS (an ADS stream
//! asking only for `default` and `ROOTCA`, timed to its first response) and Istio's
//! CreateCertificate with a CSR made beforehand (timed to its answer). The ratio is real over raw.

use crate::client::{self, ProxySpec, Target, grpc_frame};
use crate::{Args, mesh, ms};
use anyhow::{Context, anyhow, bail};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use http_body_util::BodyExt;
use meshd_ca::istio_api::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
};
use meshd_ca::{CertificateAuthority, SpiffeId};
use meshd_xds::resource::SECRET;
use prost::Message;
use std::time::{Duration, Instant};

/// One identity of the burst: how it proves itself and what it is.
pub struct Caller {
    pub node_id: String,
    pub credential: String,
    pub id: SpiffeId,
}

/// Issuances per second and the latency distribution of one path.
pub struct Rate {
    pub per_second: f64,
    pub latencies: Vec<Duration>,
}

impl Rate {
    fn of(count: usize, wall: Duration, mut latencies: Vec<Duration>) -> Rate {
        latencies.sort();
        Rate {
            per_second: count as f64 / wall.as_secs_f64().max(1e-9),
            latencies,
        }
    }

    pub fn pct(&self, q: f64) -> Duration {
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `work(i)` for every i in 0..n, spread over one thread per core; the wall time.
fn on_every_core(
    n: usize,
    work: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Duration> {
    let t = threads();
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|k| {
                let work = &work;
                s.spawn(move || (k..n).step_by(t).try_for_each(work))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow!("a raw signing thread panicked"))?
        })
    })?;
    Ok(start.elapsed())
}

/// Key generation + signing, as SDS does for each new identity.
pub fn raw_issue(ca: &CertificateAuthority, callers: &[Caller]) -> anyhow::Result<Rate> {
    let wall = on_every_core(callers.len(), |i| {
        ca.issue_workload(&callers[i].id)?;
        Ok(())
    })?;
    Ok(Rate::of(callers.len(), wall, Vec::new()))
}

/// Signing a CSR, as CreateCertificate does.
pub fn raw_sign(
    ca: &CertificateAuthority,
    callers: &[Caller],
    csrs: &[String],
) -> anyhow::Result<Rate> {
    let wall = on_every_core(callers.len(), |i| {
        ca.sign_csr(&csrs[i], &callers[i].id, None)?;
        Ok(())
    })?;
    Ok(Rate::of(callers.len(), wall, Vec::new()))
}

/// A CSR for a fresh P-256 key per caller, made before any timing starts.
pub fn csrs(callers: &[Caller]) -> anyhow::Result<Vec<String>> {
    callers
        .iter()
        .map(|c| {
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = vec![rcgen::SanType::URI(c.id.to_string().try_into()?)];
            Ok(params.serialize_request(&key)?.pem()?)
        })
        .collect()
}

/// All of `callers` at once; each task's latency from the burst's start, and the wall time to
/// the last answer. Any failure fails the run: a rate that dropped answers would flatter.
async fn burst<F, Fut>(callers: &[Caller], deadline: Duration, one: F) -> anyhow::Result<Rate>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers.len())
        .map(|i| {
            let call = one(i);
            tokio::spawn(async move {
                call.await?;
                anyhow::Ok(start.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.into_iter().enumerate() {
        let left = deadline.saturating_sub(start.elapsed());
        let took = tokio::time::timeout(left, task)
            .await
            .map_err(|_| {
                anyhow!(
                    "{} got no certificate within {deadline:?}",
                    callers[i].node_id
                )
            })?
            .context("a burst task panicked")?
            .with_context(|| callers[i].node_id.clone())?;
        latencies.push(took);
    }
    let wall = latencies.iter().copied().max().unwrap_or_default();
    Ok(Rate::of(callers.len(), wall, latencies))
}

/// SDS for new proxies: each opens its ADS stream asking for its secrets only and is timed to
/// the response carrying both.
pub async fn sds_burst(
    target: &Target,
    callers: &[Caller],
    deadline: Duration,
) -> anyhow::Result<Rate> {
    burst(callers, deadline, |i| {
        let (target, node_id, credential) = (
            target.clone(),
            callers[i].node_id.clone(),
            callers[i].credential.clone(),
        );
        async move {
            let conn = client::connect(&target).await?;
            let (tx, mut body) = client::open_call(conn, ADS_SOTW, &credential).await?;
            tx.send(grpc_frame(&secrets_request(
                node_id,
                &["default", "ROOTCA"],
            )))
            .await?;
            let message = first_message(&mut body).await?;
            let response = DiscoveryResponse::decode(message.as_slice())?;
            if response.type_url != SECRET || response.resources.len() != 2 {
                bail!(
                    "expected the two secrets, got {} resources of {}",
                    response.resources.len(),
                    response.type_url
                );
            }
            Ok(())
        }
    })
    .await
}

/// Istio's CreateCertificate over the TLS port, one call per caller with its CSR. meshd signs
/// only for a workload whose proxy is connected, so each caller first opens its ADS stream
/// (asking for the trust bundle only: no key is made for it) on its own connection, untimed;
/// then all calls go at once on those connections.
pub async fn csr_burst(
    target: &Target,
    callers: &[Caller],
    csrs: &[String],
    deadline: Duration,
) -> anyhow::Result<Rate> {
    let connected = futures::future::try_join_all(callers.iter().map(|c| {
        let (target, node_id, credential) =
            (target.clone(), c.node_id.clone(), c.credential.clone());
        async move {
            let conn = client::connect(&target).await?;
            let (tx, mut body) = client::open_call(conn.clone(), ADS_SOTW, &credential).await?;
            tx.send(grpc_frame(&secrets_request(node_id, &["ROOTCA"])))
                .await?;
            first_message(&mut body).await?;
            anyhow::Ok((conn, tx, body))
        }
    }))
    .await
    .context("connecting the proxies whose workloads ask for certificates")?;
    let result = burst(callers, deadline, |i| {
        let (conn, credential) = (connected[i].0.clone(), callers[i].credential.clone());
        let request = IstioCertificateRequest {
            csr: csrs[i].clone(),
            validity_duration: 0,
            metadata: None,
        };
        async move {
            let body = client::unary(
                conn,
                CREATE_CERTIFICATE_PATH,
                &credential,
                grpc_frame(&request),
            )
            .await?;
            let whole = body.collect().await?;
            let status = whole
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if status != "0" {
                bail!("CreateCertificate answered grpc-status {status:?}");
            }
            let bytes = whole.to_bytes();
            let message = bytes
                .get(5..)
                .context("an empty CreateCertificate answer")?;
            let response = IstioCertificateResponse::decode(message)?;
            if response.cert_chain.len() < 2 {
                bail!("a chain of {} certificates", response.cert_chain.len());
            }
            Ok(())
        }
    })
    .await;
    drop(connected);
    result
}

const ADS_SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// A proxy's first request: the node, and the secrets it asks for by name.
fn secrets_request(node_id: String, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node_id,
            ..Default::default()
        }),
        type_url: SECRET.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

/// The first whole gRPC message of a response body.
async fn first_message(body: &mut hyper::body::Incoming) -> anyhow::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() >= 5 + len {
                return Ok(buf[5..5 + len].to_vec());
            }
        }
        match body.frame().await {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            None => bail!("the stream ended before its first response"),
        }
    }
}

/// The `--ca-rate` rows: raw and real rates, their ratio, and the burst's latencies.
pub async fn rows(
    args: &Args,
    ca: &CertificateAuthority,
    shape: &mesh::Shape,
    specs: &[ProxySpec],
) -> anyhow::Result<Vec<(String, String)>> {
    let callers: Vec<Caller> = (specs.iter().enumerate())
        .map(|(w, spec)| {
            let (_, ns, sa) = mesh::workload(w, shape);
            Caller {
                node_id: spec.node_id.clone(),
                credential: spec.credential.clone(),
                id: meshd_ca::SpiffeId::new(ca.trust_domain(), ns, sa),
            }
        })
        .collect();
    let deadline = Duration::from_secs(args.phase_timeout);
    let p = callers.len();
    let row = |path: &str, real: &Rate, raw: &Rate| {
        (
            format!("{path}: a burst of {p} new proxies"),
            format!(
                "{:.0}/s (p50 {}, p99 {}); raw {:.0}/s; ratio {:.2}",
                real.per_second,
                ms(real.pct(0.5)),
                ms(real.pct(0.99)),
                raw.per_second,
                real.per_second / raw.per_second
            ),
        )
    };
    eprintln!("meshd-load: phase: CA raw key generation + signing");
    let raw_issue = raw_issue(ca, &callers)?;
    eprintln!("meshd-load: phase: SDS burst");
    let sds = sds_burst(&crate::target(args, ca)?, &callers, deadline).await?;
    let csrs = csrs(&callers)?;
    eprintln!("meshd-load: phase: CA raw CSR signing");
    let raw_sign = raw_sign(ca, &callers, &csrs)?;
    eprintln!("meshd-load: phase: CreateCertificate burst");
    let tls = Args {
        tls: true,
        ..args.clone()
    };
    let created = csr_burst(&crate::target(&tls, ca)?, &callers, &csrs, deadline).await?;
    Ok(vec![
        row("SDS (key generated by meshd)", &sds, &raw_issue),
        row("CreateCertificate (CSR, TLS port)", &created, &raw_sign),
    ])
}

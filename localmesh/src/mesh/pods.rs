//! The pods of a [`LocalMesh`]: plain pods, sidecar and gateway pods (capture rules, bootstrap,
//! app, Envoy as the proxy uid), and starting, stopping and reading the logs of their processes.

use super::*;

/// A pod with a workload behind an Envoy sidecar (or, from [`LocalMesh::add_gateway_pod`], a
/// gateway Envoy alone; its `app_port` is then 0). Cheap to clone; the [`LocalMesh`] owns the
/// processes. Derefs to its [`Pod`] (`get`, `request`, `run`, `in_netns`, ...).
#[derive(Debug, Clone)]
pub struct SidecarPod {
    pub pod: Pod,
    /// `name.namespace`.
    pub workload: String,
    pub name: String,
    pub namespace: String,
    pub app_port: u16,
    /// The Envoy bootstrap file written by `meshd bootstrap`.
    pub bootstrap: PathBuf,
    pub dir: PathBuf,
}

impl std::ops::Deref for SidecarPod {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.pod
    }
}

impl SidecarPod {
    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip
    }

    /// GET a path of Envoy's admin interface.
    pub fn envoy_admin(&self, path: &str) -> anyhow::Result<(u16, String)> {
        envoy_admin_get(&self.pod, path)
    }

    /// Envoy's `/config_dump` (with EDS), parsed.
    pub fn envoy_config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let (s, body) = self.envoy_admin("/config_dump?include_eds")?;
        if s != 200 {
            bail!("config_dump: HTTP {s}: {body}");
        }
        serde_json::from_str(&body).context("config_dump is not JSON")
    }

    /// Envoy's `/stats` (text).
    pub fn envoy_stats(&self) -> anyhow::Result<String> {
        let (s, body) = self.envoy_admin("/stats")?;
        if s != 200 {
            bail!("stats: HTTP {s}: {body}");
        }
        Ok(body)
    }

    /// One counter or gauge from `/stats` (exact name), if present.
    pub fn envoy_stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let stats = self.envoy_stats()?;
        Ok(stats.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// Whether Envoy's `/ready` answers 200.
    pub fn envoy_ready(&self) -> bool {
        matches!(self.envoy_admin("/ready"), Ok((200, _)))
    }
}
impl LocalMesh {
    /// A pod without sidecar or capture rules (a plain client or server).
    pub fn add_plain_pod(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<Pod> {
        let pod = self.net.add_pod(name, addr)?;
        self.plain_pods.lock().unwrap().push(pod.clone());
        Ok(pod)
    }

    /// Create pod `name` for `workload` (`name.namespace`): capture rules (`meshd
    /// init-iptables`), bootstrap (`meshd bootstrap`), the workload app (`meshd workload`, as
    /// root, so its traffic is captured) on `app_port` and Envoy as uid 1337.
    pub fn add_sidecar_pod_with(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app_port: u16,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        let name = workload.split_once('.').map_or(workload, |(n, _)| n);
        self.add_proxy_pod(workload, addr, Some((name.to_string(), app_port)), opts)
    }

    /// Like [`LocalMesh::add_sidecar_pod_with`], with the app answering as `app_name` (e.g. the
    /// service name, where the pod is named after the workload).
    pub fn add_service_pod_with(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app_name: &str,
        app_port: u16,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        self.add_proxy_pod(workload, addr, Some((app_name.to_string(), app_port)), opts)
    }

    /// Create pod `name` for gateway workload `workload` (`name.namespace`, a WorkloadEntry
    /// labelled `istio: ...gateway`): `meshd bootstrap` (router mode) and Envoy as uid 1337; no
    /// capture rules, no app. Of `opts`, `start_app` and `iptables_args` are ignored.
    pub fn add_gateway_pod_with(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        self.add_proxy_pod(workload, addr, None, opts)
    }

    /// [`LocalMesh::add_gateway_pod_with`] with default options.
    pub fn add_gateway_pod(&self, workload: &str, addr: Ipv4Addr) -> anyhow::Result<SidecarPod> {
        self.add_gateway_pod_with(workload, addr, SidecarOptions::default())
    }

    fn add_proxy_pod(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app: Option<(String, u16)>,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        self.check_cancelled()?;
        let (name, namespace) = workload
            .split_once('.')
            .with_context(|| format!("workload {workload:?} is not name.namespace"))?;
        let pod = self.net.add_pod(name, addr)?;
        let dir = self.opts.work_dir.join("pods").join(name);
        fs::create_dir_all(&dir)?;
        chmod(&dir, 0o755)?;
        let meshd = self.opts.meshd_bin.to_string_lossy().into_owned();

        if app.is_some() {
            let mut argv = vec![meshd.clone(), "init-iptables".into()];
            argv.extend(opts.iptables_args.iter().cloned());
            pod.run(&argv)
                .with_context(|| format!("capture rules in pod {name}"))?;
        }

        let bootstrap = dir.join("envoy-bootstrap.yaml");
        let mut cmd = pod.exec([&meshd, "bootstrap", "--workload", workload, "--xds-address"]);
        cmd.arg(self.xds_address())
            .arg("--state-dir")
            .arg(&self.opts.state_dir);
        if let Some(config_dir) = &self.opts.config_dir {
            cmd.arg("--config-dir").arg(config_dir);
        }
        cmd.arg("--out")
            .arg(&bootstrap)
            .args(&opts.bootstrap_args)
            .current_dir(&self.opts.work_dir);
        podnet::run_cmd(&mut cmd).with_context(|| format!("bootstrap for {workload}"))?;
        std::os::unix::fs::chown(&bootstrap, Some(PROXY_UID), Some(PROXY_UID))?;
        let mode = fs::metadata(&bootstrap)?.permissions().mode();
        chmod(&bootstrap, mode | 0o400)?;

        let sidecar = SidecarPod {
            pod: pod.clone(),
            workload: workload.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            app_port: app.as_ref().map_or(0, |(_, port)| *port),
            bootstrap: bootstrap.clone(),
            dir: dir.clone(),
        };
        let mut procs = PodProcs {
            pod: sidecar.clone(),
            app: None,
            envoy: None,
            envoy_argv: Vec::new(),
        };

        if let Some((app_name, port)) = app.filter(|_| opts.start_app) {
            let port_s = port.to_string();
            let mut app = pod.spawn([
                meshd.as_str(),
                "workload",
                "--name",
                &app_name,
                "--port",
                &port_s,
            ])?;
            app.grace = Duration::from_millis(500);
            procs.app = Some(app);
            let up = wait_until(Duration::from_secs(10), || {
                pod.in_netns(|| std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok())
                    .unwrap_or(false)
            });
            if !up {
                let log = procs.app.as_ref().map(Child::log_tail).unwrap_or_default();
                bail!("workload app in pod {name} not listening on {port}; log:\n{log}");
            }
        }

        let mut envoy_argv = vec![
            self.opts.envoy_bin.to_string_lossy().into_owned(),
            "--disable-hot-restart".into(),
            // As Istio runs its sidecars: when a listener's filter chain changes (an
            // AuthorizationPolicy, a PeerAuthentication mode), connections on the old chain are
            // told to close at once (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY) instead of
            // lingering, with the old policy, through Envoy's default 600 s gradual drain.
            "--drain-strategy".into(),
            "immediate".into(),
            "--drain-time-s".into(),
            "45".into(),
            "-c".into(),
            bootstrap.to_string_lossy().into_owned(),
            "--log-level".into(),
            opts.log_level.clone(),
        ];
        envoy_argv.extend(opts.envoy_args.iter().cloned());
        procs.envoy_argv = envoy_argv;
        procs.envoy = Some(self.spawn_envoy(&sidecar, &procs.envoy_argv)?);
        self.pods.lock().unwrap().push(procs);

        if opts.wait_ready {
            self.wait_envoy_ready(&sidecar)?;
        }
        Ok(sidecar)
    }

    fn spawn_envoy(&self, pod: &SidecarPod, argv: &[String]) -> anyhow::Result<Child> {
        let mut cmd = pod.exec_as(PROXY_UID, PROXY_UID, argv);
        cmd.current_dir(&pod.dir);
        // What the injector gives a pod's proxy: its OpenTelemetry tracer names the service
        // from it, and Istio's span tags read the canonical service and namespace.
        cmd.env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("service.name={}.{}", pod.name, pod.namespace),
        );
        cmd.env("CANONICAL_SERVICE", &pod.name);
        cmd.env("POD_NAMESPACE", &pod.namespace);
        let log = self.net.log_dir().join(format!(
            "{}-envoy-{}.log",
            pod.name,
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut c = Child::spawn(&format!("{}:envoy", pod.name), cmd, Some(log))?;
        c.grace = Duration::from_secs(2);
        Ok(c)
    }

    /// Wait until the Envoy of `pod` answers `/ready` (error with its log if it exits or the
    /// readiness timeout passes).
    pub fn wait_envoy_ready(&self, pod: &SidecarPod) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if pod.envoy_ready() {
                return Ok(());
            }
            let log_text = || tail(&self.envoy_log(&pod.name), 60);
            if !self.envoy_running(&pod.name) {
                bail!("Envoy in pod {} exited; log:\n{}", pod.name, log_text());
            }
            self.check_cancelled()?;
            if Instant::now() > deadline {
                bail!(
                    "Envoy in pod {} not ready after {:?}; log:\n{}\ncontrol plane log:\n{}",
                    pod.name,
                    self.opts.ready_timeout,
                    log_text(),
                    tail(&self.control_plane_log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the Envoy of pod `name` is running.
    pub fn envoy_running(&self, name: &str) -> bool {
        self.pods
            .lock()
            .unwrap()
            .iter_mut()
            .find(|p| p.pod.name == name)
            .and_then(|p| p.envoy.as_mut())
            .is_some_and(Child::is_running)
    }

    /// The sidecar (or gateway) pod named `name`.
    pub fn sidecar(&self, name: &str) -> Option<SidecarPod> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.pod.name == name)
            .map(|p| p.pod.clone())
    }

    /// Every sidecar and gateway pod, in the order they were added.
    pub fn sidecars(&self) -> Vec<SidecarPod> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.pod.clone())
            .collect()
    }

    /// Names of the pods whose Envoy or app is not running (any more).
    pub fn exited(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.pods.lock().unwrap().iter_mut() {
            if let Some(e) = p.envoy.as_mut()
                && !e.is_running()
            {
                out.push(format!("{} (envoy)", p.pod.name));
            }
            if let Some(a) = p.app.as_mut()
                && !a.is_running()
            {
                out.push(format!("{} (app)", p.pod.name));
            }
        }
        out
    }

    /// Stop (SIGTERM) the Envoy of pod `name`.
    pub fn stop_envoy(&self, name: &str) -> anyhow::Result<()> {
        let mut pods = self.pods.lock().unwrap();
        let p = pods
            .iter_mut()
            .find(|p| p.pod.name == name)
            .with_context(|| format!("no sidecar pod {name}"))?;
        if let Some(mut e) = p.envoy.take() {
            e.stop();
        }
        Ok(())
    }

    /// Restart the Envoy of pod `name` with the same bootstrap and wait until it is ready.
    pub fn restart_envoy(&self, name: &str) -> anyhow::Result<()> {
        self.stop_envoy(name)?;
        let (pod, argv) = {
            let pods = self.pods.lock().unwrap();
            let p = pods.iter().find(|p| p.pod.name == name).unwrap();
            (p.pod.clone(), p.envoy_argv.clone())
        };
        let child = self.spawn_envoy(&pod, &argv)?;
        {
            let mut pods = self.pods.lock().unwrap();
            let p = pods.iter_mut().find(|p| p.pod.name == name).unwrap();
            p.envoy = Some(child);
        }
        self.wait_envoy_ready(&pod)
    }

    /// The Envoy log of pod `name` so far.
    pub fn envoy_log(&self, name: &str) -> String {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.pod.name == name)
            .and_then(|p| p.envoy.as_ref())
            .map(Child::log_tail)
            .unwrap_or_default()
    }

    /// The workload app log of pod `name` so far.
    pub fn app_log(&self, name: &str) -> String {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.pod.name == name)
            .and_then(|p| p.app.as_ref())
            .map(Child::log_tail)
            .unwrap_or_default()
    }
}

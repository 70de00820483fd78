//! `meshd demo`: the VoiceCore mesh on this machine.

use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo keeps its CA state.
    #[arg(long, default_value = "./.meshd-demo")]
    pub state_dir: std::path::PathBuf,
}

pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("meshd demo is being assembled; run `meshd serve` for now")
}

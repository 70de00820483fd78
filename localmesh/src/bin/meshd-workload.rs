//! `meshd-workload`: the workload app on its own, for the image's VoiceCore pods (the chart's
//! default workload), since the production `meshd` there is built without the harness.

use clap::Parser;
use meshd_localmesh::workload_app::{self, WorkloadArgs};

#[derive(Parser)]
#[command(
    name = "meshd-workload",
    about = "The small HTTP workload of the demo and the chart"
)]
struct Cli {
    #[command(flatten)]
    workload: WorkloadArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(workload_app::run(cli.workload))
}

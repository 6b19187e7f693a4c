//! Seeds a data directory for the web UI benchmark (`bench/ui.sh`) through the storage
//! layer: REPOS repositories with TAGS tagged image manifests each
//! (`berth_testkit::seed::repositories`).
//!
//! ```text
//! cargo run --release -p berth --example ui_seed -- DATA_DIR [REPOS=1000] [TAGS=20]
//! ```

use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = berth_testkit::seed::seed_args("ui_seed DATA_DIR [REPOS=1000] [TAGS=20]", &[1000, 20])
        .map_err(anyhow::Error::msg)?;
    let (data, repos, tags) = (args.data, args.counts[0], args.counts[1]);
    let started = Instant::now();
    let seeded = berth_testkit::seed::repositories(&data, repos, tags).await;
    println!(
        "ui_seed: {} repositories x {} tags in {:.1?}",
        seeded.repos.len(),
        seeded.tags_per_repo,
        started.elapsed()
    );
    Ok(())
}

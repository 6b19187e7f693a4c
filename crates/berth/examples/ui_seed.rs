//! Seeds a data directory for the web UI benchmark (`bench/ui.sh`) through the storage
//! layer: REPOS repositories with TAGS tagged image manifests each
//! (`berth_testkit::seed::repositories`).
//!
//! ```text
//! cargo run --release -p berth --example ui_seed -- DATA_DIR [REPOS=1000] [TAGS=20]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(data) = args.first().map(PathBuf::from) else {
        bail!("usage: ui_seed DATA_DIR [REPOS=1000] [TAGS=20]");
    };
    let num = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i)
            .map(|s| {
                s.parse()
                    .with_context(|| format!("argument {i} {s:?} is not a count"))
            })
            .unwrap_or(Ok(default))
    };
    let (repos, tags) = (num(1, 1000)?, num(2, 20)?);
    ensure!(
        !data.join("berth.db").exists(),
        "{} already holds a berth.db; seed a fresh directory",
        data.display()
    );
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

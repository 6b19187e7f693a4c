//! berth: a self-healing container registry in one binary. This crate is glue: commands,
//! configuration, wiring.

mod admin_cli;
mod archive_cli;
mod config;
mod hosts_toml;
mod listener;
mod migrate_cli;
mod probe;
mod serve;
mod transfer_cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_TOML};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A self-healing container registry in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry (with the embedded defaults unless --config is given).
    Serve {
        /// A TOML configuration file; keys it leaves out take their default.
        #[arg(long, short, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Collect garbage on the running server: manifests no tag reaches, then the blobs
    /// nothing uses. Prints what was (or, with --dry-run, would be) deleted.
    Gc(LifecycleArgs),
    /// Apply the retention rules on the running server, then collect garbage.
    Retention(LifecycleArgs),
    /// Evict cached images over `cache.max_bytes` or unpulled too long, then collect.
    Evict(LifecycleArgs),
    /// Check what the registry holds: re-hash every blob, resolve every reference as a
    /// pull would, check every tag. Exit status 1 while damage remains.
    Scrub {
        /// Re-fetch damaged cached content from its upstream; quarantine damaged bytes.
        #[arg(long)]
        repair: bool,
        /// Report only; change nothing (overrides --repair).
        #[arg(long)]
        dry_run: bool,
        /// Only repositories matching this glob (or /regex/).
        #[arg(long)]
        repo: Option<String>,
        /// The server's URL (default: from the configuration's listen address).
        #[arg(long)]
        server: Option<String>,
        #[arg(long, short, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write containerd hosts.toml files that mirror every configured upstream through berth.
    HostsToml {
        /// berth's URL as containerd nodes reach it, e.g. http://registry.lan:5000
        #[arg(long)]
        mirror: String,
        /// Where to write `<registry host>/hosts.toml` (containerd's config_path).
        #[arg(long, default_value = "./certs.d")]
        out: PathBuf,
        /// The configuration whose upstreams to mirror (the embedded defaults otherwise).
        #[arg(long, short, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Pull references the way a client does (index, every child, config, every layer)
    /// against any registry and report what is missing or damaged; once, or every
    /// --interval with Prometheus metrics.
    Probe(probe::ProbeArgs),
    /// Write images from a registry into an OCI image layout tar archive (for `skopeo
    /// copy oci-archive:`, `podman load`, `berth import`).
    Export(archive_cli::ExportArgs),
    /// Push an archive (OCI layout archive, plain, gzip or zstd, or `docker save`) into a
    /// registry; tags move only once every image is complete.
    Import(archive_cli::ImportArgs),
    /// Copy an image (an index and every child, or --platform ones; configs, layers and,
    /// with --referrers, referrers) between registries, byte for byte, verifying every
    /// digest; skips what the destination has and resumes a partly sent blob.
    Copy(transfer_cli::CopyArgs),
    /// Copy every tag of every repository under a prefix (from the source catalog) to
    /// another registry, then verify each at the destination the way a client pulls it.
    Mirror(transfer_cli::MirrorArgs),
    /// Copy an installation's storage into another backend (filesystem + SQLite to S3 +
    /// PostgreSQL, or back): every blob streamed and re-hashed, then a consistent snapshot
    /// of the metadata replacing the destination's, then a verification pass. The source
    /// may be serving (run again after stopping it: the final pass copies only what
    /// changed); the destination must not be. Resumable: what the destination has is skipped.
    MigrateStorage(migrate_cli::MigrateArgs),
    /// Manage an htpasswd file (bcrypt) for `auth.htpasswd`; a running server picks up
    /// changes within seconds.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Show or check configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// Lifecycle commands act on a running server through its loopback admin API, so they
/// share its locks and never race its own scheduled runs.
#[derive(clap::Args)]
struct LifecycleArgs {
    /// Report what would be deleted and the bytes freed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep untagged manifests and new uploads younger than this (default: gc.grace).
    #[arg(long)]
    grace: Option<String>,
    /// The server's URL (default: from the configuration's listen address).
    #[arg(long)]
    server: Option<String>,
    #[arg(long, short, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
}

impl LifecycleArgs {
    fn run(self, job: &str) -> anyhow::Result<()> {
        let c = load(self.config.as_deref())?;
        let server = self.server.unwrap_or_else(|| admin_cli::server_url(&c));
        admin_cli::run(&server, job, self.dry_run, self.grace.as_deref())
    }
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user, or set a new password for one. The password is read from the first
    /// line of standard input (`printf '%s\n' "$PW" | berth users add FILE NAME`).
    Add {
        file: PathBuf,
        name: String,
        /// bcrypt cost (4 to 31); each step doubles the time to check a password.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
    },
    /// Remove a user.
    Remove { file: PathBuf, name: String },
    /// List the user names.
    List { file: PathBuf },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration, with a comment on every key.
    Default,
    /// Check a configuration file: unknown keys and bad values are reported with their path.
    Check { file: PathBuf },
}

fn users(command: UsersCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    use berth_auth::Htpasswd;
    let open = |file: &std::path::Path| match std::fs::metadata(file) {
        Ok(_) => Htpasswd::load(file).map_err(anyhow::Error::msg),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Htpasswd::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    };
    match command {
        UsersCommand::Add { file, name, cost } => {
            let mut users = open(&file)?;
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("password for {name} (shown as typed): ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            let existed = users.contains(&name);
            users.set(&name, password, cost).map_err(anyhow::Error::msg)?;
            users
                .save(&file)
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "{} {name} in {}",
                if existed { "updated" } else { "added" },
                file.display()
            );
        }
        UsersCommand::Remove { file, name } => {
            let mut users = open(&file)?;
            if !users.remove(&name) {
                anyhow::bail!("{name:?} is not in {}", file.display());
            }
            users
                .save(&file)
                .with_context(|| format!("writing {}", file.display()))?;
            println!("removed {name} from {}", file.display());
        }
        UsersCommand::List { file } => {
            for name in Htpasswd::load(&file).map_err(anyhow::Error::msg)?.names() {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn load(config: Option<&std::path::Path>) -> anyhow::Result<Config> {
    config.map(Config::load).unwrap_or_else(|| Ok(Config::default()))
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => config
            .as_deref()
            .map(Config::load)
            .unwrap_or_else(|| Ok(Config::default()))
            .and_then(serve::run),
        Command::Gc(a) => a.run("gc"),
        Command::Retention(a) => a.run("retention"),
        Command::Evict(a) => a.run("evict"),
        Command::Scrub {
            repair,
            dry_run,
            repo,
            server,
            config,
        } => load(config.as_deref()).and_then(|c| {
            let server = server.unwrap_or_else(|| admin_cli::server_url(&c));
            admin_cli::scrub(&server, repair, dry_run, repo.as_deref())
        }),
        Command::HostsToml { mirror, out, config } => config
            .as_deref()
            .map(Config::load)
            .unwrap_or_else(|| Ok(Config::default()))
            .and_then(|c| hosts_toml::write(&c, &mirror, &out))
            .map(|files| files.iter().for_each(|f| println!("{}", f.display()))),
        // Its own exit statuses: 1 when a reference is damaged, 2 on usage errors.
        Command::Probe(a) => return probe::run(a),
        Command::Export(a) => archive_cli::export(a),
        Command::Import(a) => archive_cli::import(a),
        // 0 copied, 1 something left uncopied, 2 usage, 130 interrupted.
        Command::Copy(a) => return transfer_cli::copy(a),
        Command::Mirror(a) => return transfer_cli::mirror(a),
        // 0 migrated and verified, 1 blobs uncopied or verification failed, 2 could not run.
        Command::MigrateStorage(a) => {
            return match migrate_cli::run(a) {
                Ok(true) => std::process::ExitCode::SUCCESS,
                Ok(false) => std::process::ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    std::process::ExitCode::from(2)
                }
            };
        }
        Command::Users { command } => users(command),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => Config::load(&file).map(|_| println!("{}: ok", file.display())),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core) and keeps
/// freed blob buffers in all of them: 16 parallel pulls then hold ~50 MiB where two
/// arenas hold ~20 MiB at the same speed (measured with bench/run.sh). Must run before any
/// thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(test)]
mod docs {
    /// Every command and flag is in the CLI reference.
    #[test]
    fn reference_lists_every_command_and_flag() {
        use clap::CommandFactory;
        let reference = include_str!("../../../docs/reference/cli.md");
        fn walk(cmd: &clap::Command, path: &str, reference: &str) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &path, reference);
                    continue;
                }
                assert!(
                    reference.contains(&format!("`{path}")),
                    "docs/reference/cli.md lacks `{path}`"
                );
                for arg in sub.get_arguments().filter_map(|a| a.get_long()) {
                    assert!(
                        reference.contains(&format!("`--{arg}")),
                        "docs/reference/cli.md lacks --{arg} ({path})"
                    );
                }
            }
        }
        walk(&super::Cli::command(), "berth", reference);
    }
}

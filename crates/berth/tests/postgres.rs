//! berth with its metadata in PostgreSQL (`storage.metadata = "postgres://..."`): real
//! pushes and pulls with skopeo, a restart, and the startup errors. The PostgreSQL cluster
//! is the testkit's private one (Debian's postgresql-15, on a loopback port).

use std::process::Command;
use std::time::Duration;

use berth_testkit::TestServer;
use berth_testkit::clients::{Skopeo, docker_ref, run};
use berth_testkit::images::{Flavor, ImageSet, OciLayout, assert_layout_holds_set};
use berth_testkit::postgres::{PASSWORD, PgCluster};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn oci_dir(dir: &std::path::Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

#[test]
fn skopeo_push_pull_and_restart_with_postgres_metadata() {
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let mut server = TestServer::start(BIN, &format!("metadata = \"{url}\""));
    let skopeo = Skopeo::new();
    let set = ImageSet::multi_platform(Flavor::Oci, "postgres-smoke");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    set.write_oci_layout(&src, "v1");
    let repo = "pg/smoke";
    skopeo.copy_all(&oci_dir(&src, "v1"), &docker_ref(&server.addr, repo, "v1"));

    // The rows are in PostgreSQL, and no SQLite file was made.
    assert_eq!(
        cluster.psql(&db, "SELECT count(*) FROM manifests WHERE repo = 'pg/smoke'"),
        (1 + set.images.len()).to_string()
    );
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT digest FROM tags WHERE repo = 'pg/smoke' AND name = 'v1'"
        ),
        set.index_digest()
    );
    assert!(
        !server.data_dir().join("berth.db").exists(),
        "no SQLite database beside PostgreSQL"
    );

    let out = tmp.path().join("out");
    skopeo.copy_all(&docker_ref(&server.addr, repo, "v1"), &oci_dir(&out, "out"));
    assert_layout_holds_set(&OciLayout::open(&out), "out", &set);

    // SIGKILL and start again on the same database: everything is still there.
    server.kill_and_restart();
    let again = tmp.path().join("again");
    skopeo.copy_all(&docker_ref(&server.addr, repo, "v1"), &oci_dir(&again, "again"));
    assert_layout_holds_set(&OciLayout::open(&again), "again", &set);
    assert_eq!(
        skopeo.list_tags(&format!("docker://{}/{repo}", server.addr)),
        ["v1"]
    );
}

/// `berth serve` with `storage.metadata = url` must fail to start; returns its stderr.
fn refused_start(url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\nmetadata = \"{url}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = run(
        Command::new(BIN).arg("serve").arg("--config").arg(&config),
        Duration::from_secs(60),
    );
    assert!(!out.success(), "berth started with {url}:\n{out}");
    out.stderr
}

#[test]
fn unusable_postgres_stops_startup_naming_the_key_not_the_password() {
    let cluster = PgCluster::shared();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        (
            format!("postgres://berth:{PASSWORD}@127.0.0.1:{closed}/registry"),
            "onnection refused",
        ),
        (
            format!(
                "postgres://berth:not-the-password@127.0.0.1:{}/postgres",
                cluster.port
            ),
            "password authentication failed",
        ),
        (cluster.url("missing_db"), "\"missing_db\" does not exist"),
    ];
    for (url, why) in cases {
        let err = refused_start(&url);
        assert!(err.contains("storage.metadata"), "names the key: {err}");
        assert!(err.contains(why), "says why ({why}): {err}");
        assert!(err.contains("berth@127.0.0.1:"), "says where: {err}");
        assert!(
            !err.contains(PASSWORD) && !err.contains("not-the-password"),
            "never shows the password: {err}"
        );
    }
}

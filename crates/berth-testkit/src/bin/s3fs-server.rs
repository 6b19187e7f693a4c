//! `s3fs-server ROOT [BUCKET]`: serves the directory ROOT as an S3 endpoint with s3s-fs on a
//! free loopback port (the bucket, default `berth-bench`, is created as ROOT/BUCKET),
//! checking signatures with the testkit's keys. Prints `s3fs-server listening on
//! http://ADDR` once ready, then serves until killed. For `bench/backends.sh`, which needs
//! an S3 endpoint outside a test process.

use berth_testkit::s3::{ACCESS_KEY, SECRET_KEY};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next() else {
        eprintln!("usage: s3fs-server ROOT [BUCKET]");
        std::process::exit(2);
    };
    let bucket = args.next().unwrap_or_else(|| "berth-bench".into());
    std::fs::create_dir_all(std::path::Path::new(&root).join(&bucket))
        .unwrap_or_else(|e| panic!("creating {root}/{bucket}: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let fs = s3s_fs::FileSystem::new(&root).unwrap_or_else(|e| panic!("s3s-fs on {root}: {e:?}"));
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!(
            "s3fs-server listening on http://{}",
            listener.local_addr().unwrap()
        );
        let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
}

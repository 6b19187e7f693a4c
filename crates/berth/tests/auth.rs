//! Access control end to end: htpasswd users made with `berth users`, the token flow,
//! every clause of the `[[access]]` rules allowed and refused, and real clients (skopeo,
//! podman, containerd) signing in.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use berth_testkit::TestServer;
use berth_testkit::clients::{Containerd, Podman, Skopeo, docker_ref, run};
use berth_testkit::images::{Flavor, ImageSet};
use support::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", b64(&format!("{user}:{pass}")))
}

/// `berth users add FILE NAME` with the password on stdin.
fn add_user(file: &Path, name: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["users", "add", "--cost", "4"])
        .arg(file)
        .arg(name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(name));
}

fn users_file(dir: &Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let file = dir.join("htpasswd");
    for (u, p) in users {
        add_user(&file, u, p);
    }
    file
}

/// Pushes a one-layer image with the given Authorization header; the status of the
/// first refused request, or 201.
fn push_as(base: &str, repo: &str, tag: &str, auth: Option<&str>, seed: u8) -> Resp {
    let h: Vec<(&str, &str)> = auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = bytes(seed, 1000);
    for blob in [&config, &layer] {
        let r = req(
            "POST",
            &format!("{base}/v2/{repo}/blobs/uploads/?digest={}", sha256(blob)),
            &h,
            Some(blob),
        );
        if r.status != 201 {
            return r;
        }
    }
    let body = image_manifest(
        &(sha256(&config), config.len()),
        &[(sha256(&layer), layer.len())],
        "",
    );
    let mut h = h.clone();
    h.push(("content-type", OCI_MANIFEST));
    req(
        "PUT",
        &format!("{base}/v2/{repo}/manifests/{tag}"),
        &h,
        Some(&body),
    )
}

fn get_as(url: &str, auth: Option<&str>) -> Resp {
    let h: Vec<(&str, &str)> = auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
    req("GET", url, &h, None)
}

/// A token from /auth/token, with the scopes asked for.
fn token(s: &TestServer, auth: Option<&str>, scopes: &[&str]) -> String {
    let q: Vec<String> = scopes.iter().map(|sc| format!("scope={sc}")).collect();
    let r = get_as(
        &s.url(&format!("/auth/token?service=berth&{}", q.join("&"))),
        auth,
    );
    assert_eq!(r.status, 200, "token: {}", r.text());
    let j = r.json();
    assert_eq!(j["token"], j["access_token"]);
    assert!(j["expires_in"].as_u64().unwrap() > 0);
    j["token"].as_str().unwrap().to_string()
}

/// The `access` claim of a token (its middle part, base64url JSON).
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn assert_unauthorized(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.code(), "UNAUTHORIZED", "{what}");
    let c = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no challenge"));
    assert!(
        c.starts_with("Bearer realm=\"http://") && c.contains("/auth/token\""),
        "{what}: {c}"
    );
    assert!(c.contains("service=\"berth\""), "{what}: {c}");
}

fn assert_denied(r: &Resp, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.text());
    assert_eq!(r.code(), "DENIED", "{what}");
    assert!(
        r.header("www-authenticate").is_none(),
        "{what}: a 403 needs no challenge"
    );
}

const RULES: &str = r#"
[[access]]
repository = "public/**"
anonymous = ["pull"]
authenticated = ["push"]

[[access]]
repository = "team/**"
kind = "hosted"
authenticated = ["pull"]
users = { alice = ["push"] }
groups = { admins = ["*"] }
"#;

fn rules_server(dir: &Path, extra: &str) -> TestServer {
    let file = users_file(
        dir,
        &[("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw")],
    );
    TestServer::start(
        BIN,
        &format!(
            "[auth]\nhtpasswd = \"{}\"\ngroups = {{ admins = [\"carol\"] }}\n{extra}\n{RULES}",
            file.display()
        ),
    )
}

#[test]
fn every_rule_clause_allows_and_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let s = rules_server(tmp.path(), "");
    let base = s.url("");
    let (alice, bob, carol) = (
        basic("alice", "alice-pw"),
        basic("bob", "bob-pw"),
        basic("carol", "carol-pw"),
    );

    // /v2/ sends anonymous clients to sign in; signed-in ones get 200.
    assert_unauthorized(&get(&s.url("/v2/")), "anonymous /v2/");
    assert_eq!(get_as(&s.url("/v2/"), Some(&alice)).status, 200);
    assert_unauthorized(
        &get_as(&s.url("/v2/"), Some(&basic("alice", "wrong"))),
        "wrong password",
    );
    assert_unauthorized(
        &get_as(&s.url("/v2/"), Some(&basic("mallory", "x"))),
        "unknown user",
    );
    assert_unauthorized(&get_as(&s.url("/v2/"), Some("Digest abc")), "unsupported scheme");
    assert_unauthorized(&get_as(&s.url("/v2/"), Some("Basic !!!")), "garbage Basic");

    // authenticated clause: anyone signed in pushes to public/; anonymous clause: anyone pulls.
    let r = push_as(&base, "public/app", "v1", None, 1);
    assert_unauthorized(&r, "anonymous push to public");
    let c = r.header("www-authenticate").unwrap();
    assert!(c.contains("scope=\"repository:public/app:pull,push\""), "{c}");
    assert_eq!(push_as(&base, "public/app", "v1", Some(&bob), 1).status, 201);
    assert_eq!(
        get(&s.url("/v2/public/app/manifests/v1")).status,
        200,
        "anonymous pull of public"
    );
    assert_eq!(get(&s.url("/v2/public/app/tags/list")).status, 200);
    let r = req(
        "DELETE",
        &s.url("/v2/public/app/manifests/v1"),
        &[("authorization", &bob)],
        None,
    );
    assert_denied(&r, "bob deletes in public (no clause gives delete)");
    let msg = r.json()["errors"][0]["message"].as_str().unwrap().to_string();
    assert_eq!(msg, "user \"bob\" may not delete public/app (allowed: pull,push)");

    // users clause: alice pushes to team/, bob (authenticated: pull only) may not.
    assert_eq!(push_as(&base, "team/app", "v1", Some(&alice), 2).status, 201);
    assert_denied(
        &push_as(&base, "team/app", "v2", Some(&bob), 3),
        "bob pushes to team",
    );
    assert_eq!(
        get_as(&s.url("/v2/team/app/manifests/v1"), Some(&bob)).status,
        200
    );
    assert_unauthorized(
        &get(&s.url("/v2/team/app/manifests/v1")),
        "anonymous pull of team",
    );
    assert_unauthorized(&get(&s.url("/v2/team/app/tags/list")), "anonymous tags of team");
    // groups clause: carol (admins) may delete; alice may not.
    let del = |who: &str| {
        req(
            "DELETE",
            &s.url("/v2/team/app/manifests/v1"),
            &[("authorization", who)],
            None,
        )
    };
    assert_denied(&del(&alice), "alice deletes in team");
    assert_eq!(push_as(&base, "team/app", "v2", Some(&carol), 4).status, 201);
    assert_eq!(del(&carol).status, 202);

    // No rule matches: closed to everyone, even signed in (default deny).
    assert_denied(
        &push_as(&base, "other/app", "v1", Some(&alice), 5),
        "right user, wrong repo",
    );
    assert_unauthorized(&push_as(&base, "other/app", "v1", None, 5), "anonymous, no rule");

    // The catalog shows only what the caller may pull.
    let cat = |auth: Option<&str>| get_as(&s.url("/v2/_catalog"), auth).json()["repositories"].clone();
    assert_eq!(cat(None), serde_json::json!(["public/app"]));
    assert_eq!(cat(Some(&bob)), serde_json::json!(["public/app", "team/app"]));
    let page = get_as(&s.url("/v2/_catalog?n=1"), Some(&bob));
    assert_eq!(page.json()["repositories"], serde_json::json!(["public/app"]));
    assert!(
        page.header("link").unwrap().contains("last=public/app"),
        "{:?}",
        page.headers
    );

    // Cross-repository mount from a repository the caller may not pull opens an ordinary
    // upload instead of revealing the blob.
    let layer = sha256(&bytes(2, 1000));
    let r = req(
        "POST",
        &s.url(&format!(
            "/v2/public/app/blobs/uploads/?mount={layer}&from=team/app"
        )),
        &[("authorization", &basic("alice", "alice-pw"))],
        None,
    );
    assert_eq!(r.status, 201, "alice may pull team/app, so the mount happens");
    let dave_file = tmp.path().join("htpasswd");
    add_user(&dave_file, "dave", "dave-pw");
    let deadline = Instant::now() + Duration::from_secs(10);
    let dave = basic("dave", "dave-pw");
    while get_as(&s.url("/v2/"), Some(&dave)).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the new user was not picked up within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = req(
        "POST",
        &s.url(&format!(
            "/v2/public/other/blobs/uploads/?mount={layer}&from=carol/private"
        )),
        &[("authorization", &dave)],
        None,
    );
    assert_eq!(
        r.status,
        202,
        "no mount from a repository dave may not pull: {}",
        r.text()
    );
}

#[test]
fn tokens_grant_only_what_rules_allow_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let s = rules_server(tmp.path(), "token_ttl = \"1s\"");
    let base = s.url("");
    let alice = basic("alice", "alice-pw");
    assert_eq!(push_as(&base, "team/app", "v1", Some(&alice), 1).status, 201);

    // The token carries, of what was asked, what the rules allow.
    let bob_token = token(
        &s,
        Some(&basic("bob", "bob-pw")),
        &["repository:team/app:pull,push"],
    );
    let c = claims(&bob_token);
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["aud"], "berth");
    assert_eq!(c["access"][0]["name"], "team/app");
    assert_eq!(c["access"][0]["actions"], serde_json::json!(["pull"]));
    let bearer = format!("Bearer {bob_token}");
    assert_eq!(
        get_as(&s.url("/v2/team/app/manifests/v1"), Some(&bearer)).status,
        200
    );
    assert_denied(
        &push_as(&base, "team/app", "v2", Some(&bearer), 2),
        "bob's token, push",
    );

    // A token for another scope: 401 insufficient_scope where the user's rules would allow.
    let alice_token = format!(
        "Bearer {}",
        token(&s, Some(&alice), &["repository:team/app:pull"])
    );
    let r = push_as(&base, "team/app", "v3", Some(&alice_token), 3);
    assert_unauthorized(&r, "alice's pull token used to push");
    let c = r.header("www-authenticate").unwrap();
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("repository:team/app:pull,push"),
        "{c}"
    );
    let r = get_as(&s.url("/v2/public/x/tags/list"), Some(&alice_token));
    assert_unauthorized(&r, "token for team/app used on public/x");

    // Wrong password at the token endpoint: 401 with a Basic challenge.
    let r = get_as(
        &s.url("/auth/token?service=berth&scope=repository:team/app:pull"),
        Some(&basic("alice", "nope")),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "UNAUTHORIZED");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic "));
    // Another service's token request is refused.
    assert_eq!(
        get_as(&s.url("/auth/token?service=elsewhere"), Some(&alice)).status,
        400
    );

    // An anonymous token grants the anonymous clause only.
    let anon = token(
        &s,
        None,
        &["repository:team/app:pull", "repository:public/app:pull,push"],
    );
    let c = claims(&anon);
    assert_eq!(c["sub"], "");
    assert_eq!(c["access"][0]["actions"], serde_json::json!([]));
    assert_eq!(c["access"][1]["actions"], serde_json::json!(["pull"]));

    // OAuth2 password grant (POST), as some clients use.
    let form = format!(
        "grant_type=password&username=alice&password=alice-pw&service=berth&scope={}",
        "repository:team/app:pull%20repository:team/app:push"
    );
    let r = req(
        "POST",
        &s.url("/auth/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(form.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&t)["access"].as_array().unwrap().len(), 2);

    // A token signed by another key, and a tampered one: invalid_token.
    let other = tempfile::tempdir().unwrap();
    let forged = {
        let o = rules_server(other.path(), "");
        token(&o, Some(&alice), &["repository:team/app:pull"])
    };
    let r = get_as(
        &s.url("/v2/team/app/manifests/v1"),
        Some(&format!("Bearer {forged}")),
    );
    assert_unauthorized(&r, "token of another berth");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    // Expired (ttl 1 s, 2 s of leeway): refused, and then the flow gives a fresh one.
    std::thread::sleep(Duration::from_secs(4));
    let r = get_as(&s.url("/v2/team/app/manifests/v1"), Some(&bearer));
    assert_unauthorized(&r, "expired token");
    assert!(r.text().contains("expired"), "{}", r.text());
}

#[test]
fn forwarded_user_only_from_trusted_proxies() {
    let tmp = tempfile::tempdir().unwrap();
    let trusted = rules_server(
        tmp.path(),
        "forward_user_header = \"X-Forwarded-User\"\nforward_groups_header = \"X-Forwarded-Groups\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let fwd = |s: &TestServer, user: &str, groups: &str, repo: &str| {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        req(
            "POST",
            &s.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(config))),
            &[("x-forwarded-user", user), ("x-forwarded-groups", groups)],
            Some(config),
        )
    };
    assert_eq!(fwd(&trusted, "alice", "", "team/app").status, 201);
    assert_denied(
        &fwd(&trusted, "bob", "", "team/app"),
        "forwarded bob pushes to team",
    );
    assert_eq!(
        fwd(&trusted, "erin", "admins", "team/app").status,
        201,
        "forwarded group"
    );
    drop(trusted);

    let tmp2 = tempfile::tempdir().unwrap();
    let untrusted = rules_server(
        tmp2.path(),
        "forward_user_header = \"X-Forwarded-User\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
    );
    assert_unauthorized(
        &fwd(&untrusted, "alice", "", "team/app"),
        "header from an untrusted peer",
    );
}

#[test]
fn htpasswd_with_other_hashes_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("htpasswd");
    std::fs::write(&file, "alice:$apr1$salt1234$abcdefghijklmnopqrstu/\n").unwrap();
    let config = tmp.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n[auth]\nhtpasswd = \"{}\"\n",
            tmp.path().join("data").display(),
            file.display()
        ),
    )
    .unwrap();
    let out = run(
        Command::new(BIN).arg("serve").arg("--config").arg(&config),
        Duration::from_secs(30),
    );
    assert!(!out.success());
    let err = &out.stderr;
    assert!(
        err.contains("line 1") && err.contains("\"alice\"") && err.contains("bcrypt only"),
        "{err}"
    );

    // `berth users` manages the file; list and remove.
    std::fs::remove_file(&file).unwrap();
    add_user(&file, "alice", "pw");
    add_user(&file, "bob", "pw");
    let list = run(
        Command::new(BIN).args(["users", "list"]).arg(&file),
        Duration::from_secs(10),
    )
    .ok();
    assert_eq!(list.stdout_str(), "alice\nbob\n");
    run(
        Command::new(BIN)
            .args(["users", "remove"])
            .arg(&file)
            .arg("alice"),
        Duration::from_secs(10),
    )
    .ok();
    let gone = run(
        Command::new(BIN)
            .args(["users", "remove"])
            .arg(&file)
            .arg("alice"),
        Duration::from_secs(10),
    );
    assert!(!gone.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("bob:$2b$04$") || text.starts_with("bob:$2y$04$"),
        "{text}"
    );
}

#[test]
fn skopeo_and_podman_sign_in_through_the_token_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let file = users_file(tmp.path(), &[("alice", "alice-pw")]);
    let s = TestServer::start(BIN, &format!("[auth]\nhtpasswd = \"{}\"\n", file.display()));
    let skopeo = Skopeo::new();
    let set = ImageSet::multi_platform(Flavor::Oci, "auth-skopeo");
    let layout = tmp.path().join("layout");
    set.write_oci_layout(&layout, "v1");
    let src = format!("oci:{}:v1", layout.display());
    let dst = docker_ref(&s.addr, "team/app", "v1");

    let out = skopeo.try_copy(&src, &dst, &["--all"]);
    assert!(!out.success(), "anonymous push must fail:\n{out}");
    assert!(
        out.to_string().contains("401") || out.to_string().to_lowercase().contains("unauthorized"),
        "{out}"
    );
    let out = skopeo.try_copy(&src, &dst, &["--all", "--dest-creds", "alice:wrong"]);
    assert!(!out.success(), "wrong password must fail:\n{out}");
    skopeo.copy(&src, &dst, &["--all", "--dest-creds", "alice:alice-pw"]);
    let raw = skopeo
        .try_run(&[
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--creds",
            "alice:alice-pw",
            &dst,
        ])
        .ok()
        .stdout;
    assert_eq!(sha256(&raw), set.index_digest());
    assert!(
        !skopeo.try_inspect_raw(&dst).success(),
        "anonymous inspect of a hosted repo"
    );
    // skopeo went through /auth/token (the challenge is Bearer), not only Basic.
    let metrics = get(&s.url("/metrics")).text();
    let tokens: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("berth_http_requests_total{")
                && l.contains("route=\"token\"")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(tokens >= 2.0, "tokens issued: {tokens}\n{metrics}");

    // podman: push and pull with --creds, refused without.
    let podman = Podman::new();
    let img = format!("{}/team/app:v1", s.addr);
    let out = podman.try_run(&["pull", "--tls-verify=false", "--arch", "amd64", &img]);
    assert!(!out.success(), "anonymous podman pull must fail:\n{out}");
    podman.run(&[
        "pull",
        "--tls-verify=false",
        "--arch",
        "amd64",
        "--creds",
        "alice:alice-pw",
        &img,
    ]);
    let again = format!("{}/team/copy:v2", s.addr);
    podman.tag(&img, &again);
    podman.run(&["push", "--tls-verify=false", "--creds", "alice:alice-pw", &again]);
    let out = podman.try_run(&["push", "--tls-verify=false", "--creds", "alice:nope", &again]);
    assert!(!out.success(), "push with a wrong password must fail:\n{out}");
    assert_eq!(
        get_as(
            &s.url("/v2/team/copy/tags/list"),
            Some(&basic("alice", "alice-pw"))
        )
        .json()["tags"],
        serde_json::json!(["v2"])
    );
}

#[test]
fn containerd_pulls_with_an_authorization_header_in_hosts_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let file = users_file(tmp.path(), &[("ci", "ci-pw")]);
    let s = TestServer::start(BIN, &format!("[auth]\nhtpasswd = \"{}\"\n", file.display()));
    let set = ImageSet::multi_platform(Flavor::Oci, "auth-containerd");
    let layout = tmp.path().join("layout");
    set.write_oci_layout(&layout, "v1");
    Skopeo::new().copy(
        &format!("oci:{}:v1", layout.display()),
        &docker_ref(&s.addr, "team/app", "v1"),
        &["--all", "--dest-creds", "ci:ci-pw"],
    );

    let hosts = |dir: &Path, header: Option<&str>| {
        let d = dir.join(&s.addr);
        std::fs::create_dir_all(&d).unwrap();
        let mut t = format!(
            "server = \"http://{a}\"\n\n[host.\"http://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            a = s.addr
        );
        if let Some(h) = header {
            t.push_str(&format!(
                "  [host.\"http://{}\".header]\n    authorization = \"{h}\"\n",
                s.addr
            ));
        }
        std::fs::write(d.join("hosts.toml"), t).unwrap();
    };
    let with = tmp.path().join("with");
    let without = tmp.path().join("without");
    hosts(&with, Some(&basic("ci", "ci-pw")));
    hosts(&without, None);
    let ctrd = Containerd::start();
    let image = format!("{}/team/app:v1", s.addr);
    let pull = |dir: &Path| {
        ctrd.try_ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            dir.to_str().unwrap(),
            "--all-platforms",
            &image,
        ])
    };
    let out = pull(&without);
    assert!(
        !out.success(),
        "containerd without credentials must be refused:\n{out}"
    );
    let out = pull(&with);
    assert!(out.success(), "{out}");
    for b in set.all_blobs() {
        assert_eq!(ctrd.content(&b.digest), b.data, "content {}", b.digest);
    }
}

#[test]
fn upstream_credentials_never_reach_clients() {
    let secret = "upstream-secret-7f3a9c";
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n[[upstream]]\nname = \"up.test\"\nurl = \"http://127.0.0.1:9\"\nusername = \"me\"\npassword_env = \"BERTH_TEST_UPSTREAM_PW\"\nconnect_timeout = \"1s\"\n",
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("BERTH_TEST_UPSTREAM_PW", secret)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let line = {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    };
    let addr = line.trim().rsplit("://").next().unwrap().to_string();
    for path in [
        "/v2/up.test/library/x/manifests/latest",
        "/v2/up.test/library/x/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "/v2/up.test/library/x/tags/list",
        "/metrics",
    ] {
        let r = get(&format!("http://{addr}{path}"));
        assert!(
            !r.text().contains(secret),
            "{path} revealed the upstream password"
        );
        assert!(
            r.headers.values().all(|v| !v.contains(secret)),
            "{path}: a header holds it"
        );
    }
    berth_testkit::terminate(child, Duration::from_secs(10));
    let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
    assert!(
        log.contains("up.test"),
        "the debug log says nothing of the upstream:\n{log}"
    );
    assert!(!log.contains(secret), "the log holds the upstream password");
}

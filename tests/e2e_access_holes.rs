//! End-to-end: the holes an attack run found in access control (issue 30),
//! each closed: the default collection signed like any other, an
//! address-bound URL judged by its viewer's address wherever the read
//! lands, a reason on every refusal in the audit log, the operator page
//! behind the cluster's credential, and a key ring that fails to reload
//! made visible.
//!
//! Why one file of ~790 lines: one test per access-control hole an attack run
//! found, kept together so the list reads as the run's report.

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use hayloft_access::signed_url::{parse_bind, sign};
use hayloft_client::UploadOptions;
use reqwest::{StatusCode, header};
use support::access::{Embedded, K1, connect_when_up, get, now, wait_refused, write_keyring};
use support::{Cluster, eventually, secs};

/// A GET of `url` from the loopback address `from` (127.0.0.2 and the rest
/// of 127/8 are this machine's too, so a test plays several viewers).
async fn get_from(from: &str, url: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
}

/// `[collections.default] access = "signed"` protects the blobs uploaded
/// without a collection (stored under the empty name) and those uploaded
/// as `default`: one collection, one name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signing_the_default_collection_protects_its_blobs() {
    let keys = tempfile::tempdir().unwrap();
    let ring = write_keyring(keys.path(), false);
    let config = keys.path().join("directory.toml");
    std::fs::write(&config, "[collections.default]\naccess = \"signed\"\n").unwrap();
    let cluster = Cluster::builder()
        .zones(&["a"])
        .replication(1)
        .directory_args(["--config", config.to_str().unwrap()])
        .volume_args(["--keyring", ring.to_str().unwrap()])
        .start()
        .await;
    let client = cluster.client().await;
    let unnamed = client
        .upload(
            Bytes::from_static(b"default bytes"),
            &UploadOptions::default(),
        )
        .await
        .unwrap();
    let named = client
        .upload(
            Bytes::from_static(b"named default"),
            &UploadOptions {
                collection: "default".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    // Unsigned: refused, both ways of naming it (the same volume).
    wait_refused(&unnamed.url).await;
    assert_eq!(get(&named.url).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        unnamed
            .blob_id
            .parse::<hayloft_storage::BlobId>()
            .unwrap()
            .volume(),
        named
            .blob_id
            .parse::<hayloft_storage::BlobId>()
            .unwrap()
            .volume(),
        "`default` is the default collection, not another one"
    );
    // Signed: served, tagged `collection-default` for purges.
    let path = format!("/{}", unnamed.blob_id);
    let origin = unnamed.url.rsplit_once('/').unwrap().0;
    let signed = format!(
        "{origin}{path}?{}",
        sign(K1, "k1", &path, now() + 600, None)
    );
    let read = get(&signed).await;
    assert_eq!(read.status(), StatusCode::OK);
    let tags = read.headers()["surrogate-key"].to_str().unwrap().to_owned();
    assert!(tags.contains("collection-default"), "{tags}");
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"default bytes");
    // `status --json` calls it `default` too.
    let (ok, out) = support::hayloft(&cluster, &["status", "--json"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        status["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["collection"] == "default"),
        "{status:#}"
    );
}

/// A URL bound to one viewer's address: the server holding the blob and
/// a server that does not (and proxies the read) give the same verdict,
/// judged by the viewer's address, never the proxying server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_bound_url_gets_one_verdict_from_every_server() {
    let keys = tempfile::tempdir().unwrap();
    let ring = write_keyring(keys.path(), false);
    let config = keys.path().join("directory.toml");
    std::fs::write(&config, "[collections.private]\naccess = \"signed\"\n").unwrap();
    let cluster = Cluster::builder()
        .zones(&["a", "b"])
        .replication(1)
        .directory_args(["--config", config.to_str().unwrap()])
        .volume_args(["--keyring", ring.to_str().unwrap()])
        .start()
        .await;
    let client = cluster.client().await;
    let blob = client
        .upload(
            Bytes::from_static(b"for one viewer"),
            &UploadOptions {
                collection: "private".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    let status = client.status().await.unwrap();
    let holder = support::server_index(&support::server_of(&status, &blob.blob_id));
    let other = 1 - holder;
    let path = format!("/{}", blob.blob_id);
    let bound_to = |network: &str| sign(K1, "k1", &path, now() + 600, parse_bind(network));
    let to_viewer = bound_to("127.0.0.2/32");
    let to_proxy = bound_to("127.0.0.1/32");
    // Both servers guard the collection (one heartbeat each).
    wait_refused(&format!("{}{path}", cluster.http_base(holder))).await;
    wait_refused(&format!("{}{path}", cluster.http_base(other))).await;

    for server in [holder, other] {
        let at = |query: &str| format!("{}{path}?{query}", cluster.http_base(server));
        let what = if server == holder {
            "holder"
        } else {
            "non-holder"
        };
        // The bound viewer is served.
        let read = get_from("127.0.0.2", &at(&to_viewer)).await;
        assert_eq!(read.status(), StatusCode::OK, "the viewer at the {what}");
        assert_eq!(read.bytes().await.unwrap().as_ref(), b"for one viewer");
        // Another viewer is refused, with the viewer's URL or with one
        // bound to the address the non-holder proxies from.
        for query in [&to_viewer, &to_proxy] {
            let read = get_from("127.0.0.3", &at(query)).await;
            assert_eq!(
                read.status(),
                StatusCode::FORBIDDEN,
                "another viewer at the {what}"
            );
            assert_eq!(read.headers()[header::CACHE_CONTROL], "no-store");
            assert!(read.headers().get("x-hayloft-refusal").is_none());
        }
    }
    // A viewer cannot vouch for itself: the holder believes only a vouch
    // made with the cluster's key ring for that very request.
    let holder_url = format!("{}{path}?{to_viewer}", cluster.http_base(holder));
    let forged = hayloft_access::viewer::vouch(
        &hayloft_access::Keyring::from_secrets(Some("k1"), [("k1".to_owned(), vec![7; 32])])
            .unwrap(),
        &format!("{path}?{to_viewer}"),
        "127.0.0.2".parse().unwrap(),
        now(),
    )
    .unwrap();
    let genuine_elsewhere = hayloft_access::viewer::vouch(
        &hayloft_access::Keyring::load(&ring).unwrap(),
        &format!("{path}?{to_proxy}"),
        "127.0.0.2".parse().unwrap(),
        now(),
    )
    .unwrap();
    for vouch in ["127.0.0.2".to_owned(), forged, genuine_elsewhere] {
        let read = reqwest::Client::builder()
            .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
            .get(&holder_url)
            .header("x-hayloft-proxied", "1")
            .header(hayloft_access::viewer::VIEWER_HEADER, &vouch)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::FORBIDDEN, "vouch {vouch}");
    }
}

/// A read a non-holder proxies counts against its viewer's rate limit, at
/// the non-holder, and not again at the holder, where every proxied read
/// comes from the non-holder's address (its viewers would share one
/// limit). A viewer past its own limit is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxied_reads_count_against_each_viewer_not_the_proxy() {
    let keys = tempfile::tempdir().unwrap();
    let ring = write_keyring(keys.path(), false);
    let config = keys.path().join("volume.toml");
    std::fs::write(&config, "[limits]\nhttp = { per_minute = 3 }\n").unwrap();
    let cluster = Cluster::builder()
        .zones(&["a", "b"])
        .replication(1)
        .volume_args([
            "--keyring",
            ring.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .start()
        .await;
    let client = cluster.client().await;
    let blob = client
        .upload(Bytes::from_static(b"popular"), &UploadOptions::default())
        .await
        .unwrap();
    let status = client.status().await.unwrap();
    let holder = support::server_index(&support::server_of(&status, &blob.blob_id));
    let through = format!("{}/{}", cluster.http_base(1 - holder), blob.blob_id);
    // Ten viewers, two reads each, all through the non-holder: each within
    // its own limit, so all served (the holder saw twenty from one address).
    for viewer in 2..12 {
        for _ in 0..2 {
            let read = get_from(&format!("127.0.0.{viewer}"), &through).await;
            assert_eq!(read.status(), StatusCode::OK, "viewer 127.0.0.{viewer}");
            assert_eq!(read.bytes().await.unwrap().as_ref(), b"popular");
        }
    }
    // One viewer past its limit: refused, by the non-holder.
    let statuses: Vec<StatusCode> = {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get_from("127.0.0.20", &through).await.status());
        }
        statuses
    };
    assert_eq!(statuses[..3], [StatusCode::OK; 3], "{statuses:?}");
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    // A proxied read whose vouch is not the cluster's is counted as usual
    // (against the address it came from).
    let at_holder = format!("{}/{}", cluster.http_base(holder), blob.blob_id);
    let mut last = StatusCode::OK;
    for _ in 0..4 {
        last = reqwest::Client::builder()
            .local_address("127.0.0.30".parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
            .get(&at_holder)
            .header("x-hayloft-proxied", "1")
            .header(hayloft_access::viewer::VIEWER_HEADER, "127.0.0.31")
            .send()
            .await
            .unwrap()
            .status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

/// Every refusal line of the audit log says why: refusals of the token
/// gate, and those a method decides once it knows the collection (Assign,
/// Read, Stat, Delete and SignUrl narrowed to it; a write grant for
/// another blob; a per-collection rate limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal_in_the_audit_log_says_why() {
    use hayloft_proto::volume_client::VolumeClient;
    use hayloft_proto::{
        AssignRequest, Credential, WriteHeader, WriteRequest, write_request::Part,
    };
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let ring = write_keyring(dir.path(), false);
    let (directory_log, volume_log) = (dir.path().join("d.log"), dir.path().join("v.log"));
    let server = Embedded::start(
        dir.path(),
        &format!(
            "[directory]\npulse = \"1s\"\n\
             [directory.audit]\npath = \"{directory_log}\"\n\
             [directory.collections.private]\naccess = \"signed\"\n\
             [directory.limits.grpc]\n\"write:limited\" = {{ per_minute = 1 }}\n\
             [volume.audit]\npath = \"{volume_log}\"\n",
            directory_log = directory_log.display(),
            volume_log = volume_log.display(),
        ),
        &["--keyring", ring.to_str().unwrap(), "--require-tokens"],
    );
    let addr = server.addr.clone();
    let with = |scopes: &[&str]| {
        let token = support::mint_token(&ring, scopes).0;
        let addr = addr.clone();
        async move { connect_when_up(&addr).await.with_token(&token).unwrap() }
    };
    let options = |collection: &str| UploadOptions {
        collection: collection.into(),
        ..UploadOptions::default()
    };
    let owner = with(&["write:*", "read:*"]).await;
    let video = owner
        .upload(Bytes::from_static(b"a video"), &options("videos"))
        .await
        .unwrap();
    let private = owner
        .upload(Bytes::from_static(b"private"), &options("private"))
        .await
        .unwrap();
    let photos_only = [
        "write:photos",
        "write:limited",
        "read:photos",
        "delete:photos",
        "sign:photos",
    ];
    let photographer = with(&photos_only).await;
    let code = |e: hayloft_client::Error| e.code();
    // Narrowed to the collection inside each method.
    let refused = photographer
        .upload(Bytes::from_static(b"x"), &options("videos"))
        .await
        .unwrap_err();
    assert_eq!(code(refused), Some(Code::PermissionDenied));
    let refused = photographer.download(&video.blob_id).await.unwrap_err();
    assert_eq!(code(refused), Some(Code::PermissionDenied));
    let refused = photographer.stat(&video.blob_id).await.unwrap_err();
    assert_eq!(code(refused), Some(Code::PermissionDenied));
    let refused = photographer.delete(&video.blob_id).await.unwrap_err();
    assert_eq!(code(refused), Some(Code::PermissionDenied));
    let refused = photographer
        .request_signed_url(
            &private.blob_id,
            std::time::Duration::from_secs(60),
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(code(refused), Some(Code::PermissionDenied));
    // A per-collection rate limit: one Assign a minute into `limited`
    // (each new client reserves its own ids).
    photographer
        .upload(Bytes::from_static(b"x"), &options("limited"))
        .await
        .unwrap();
    let refused = with(&photos_only)
        .await
        .upload(Bytes::from_static(b"x"), &options("limited"))
        .await
        .unwrap_err();
    assert_eq!(code(refused), Some(Code::ResourceExhausted));
    // A write grant used for another blob.
    let token = support::mint_token(&ring, &["write:photos"]).0;
    let assigned = hayloft_proto::Directories::new(&addr)
        .unwrap()
        .with_credential(Credential::bearer(&token).unwrap())
        .unwrap()
        .call(|mut d| async move {
            d.assign(AssignRequest {
                count: 2,
                collection: "photos".into(),
                ..AssignRequest::default()
            })
            .await
        })
        .await
        .unwrap();
    let (first, second) = (&assigned.blobs[0], &assigned.blobs[1]);
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        assigned.locations[0].grpc_addr
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let reader = support::mint_token(&ring, &["read:photos"]).0;
    let mut volume = VolumeClient::new(Credential::bearer(&reader).unwrap().channel(channel));
    let header = WriteHeader {
        blob_id: second.blob_id.clone(),
        size: 5,
        grant: first.grant.clone(),
        ..WriteHeader::default()
    };
    let stolen = volume
        .write(futures::stream::iter([
            WriteRequest {
                part: Some(Part::Header(header)),
            },
            WriteRequest {
                part: Some(Part::Chunk(Bytes::from_static(b"hello"))),
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::PermissionDenied);

    let refusal = |lines: &[serde_json::Value], op: &str, status: &str| {
        lines
            .iter()
            .find(|l| l["op"] == op && l["status"] == status)
            .unwrap_or_else(|| panic!("no {op} {status} line in {lines:#?}"))
            .clone()
    };
    let volume_lines = support::access::audit_lines(&volume_log, |l| {
        l["op"] == "Write" && l["status"] == "PERMISSION_DENIED"
    })
    .await;
    let directory_lines = support::access::audit_lines(&directory_log, |l| {
        l["op"] == "SignUrl" && l["status"] == "PERMISSION_DENIED"
    })
    .await;
    for (lines, op, status, says) in [
        (
            &directory_lines,
            "Assign",
            "PERMISSION_DENIED",
            "write:videos",
        ),
        (
            &directory_lines,
            "Assign",
            "RESOURCE_EXHAUSTED",
            "write:limited",
        ),
        (
            &directory_lines,
            "SignUrl",
            "PERMISSION_DENIED",
            "sign:private",
        ),
        (&volume_lines, "Read", "PERMISSION_DENIED", "read:videos"),
        (&volume_lines, "Stat", "PERMISSION_DENIED", "read:videos"),
        (
            &volume_lines,
            "Delete",
            "PERMISSION_DENIED",
            "delete:videos",
        ),
        (&volume_lines, "Write", "PERMISSION_DENIED", "grant"),
    ] {
        let line = refusal(lines, op, status);
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(says), "{op} {status}: {line}");
    }
    for line in directory_lines.iter().chain(&volume_lines) {
        if line["status"] != "OK" {
            assert!(
                !line["reason"].as_str().unwrap_or_default().is_empty(),
                "a refusal without a reason: {line}"
            );
        }
    }
}

/// A read refused by the copy it was proxied to (that copy's key ring no
/// longer has the key, this server's still does) is logged here with the
/// copy's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_holder_logs_the_reason_its_copy_refused() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("directory.toml");
    std::fs::write(&config, "[collections.private]\naccess = \"signed\"\n").unwrap();
    let mut rings = Vec::new();
    let mut volume_args = Vec::new();
    for i in 0..2 {
        let dir = root.path().join(format!("keys{i}"));
        std::fs::create_dir(&dir).unwrap();
        let ring = write_keyring(&dir, true);
        let volume_config = dir.join("volume.toml");
        std::fs::write(
            &volume_config,
            format!("[audit]\npath = \"{}\"\n", dir.join("audit.log").display()),
        )
        .unwrap();
        volume_args.push(vec![
            "--keyring".to_owned(),
            ring.display().to_string(),
            "--config".to_owned(),
            volume_config.display().to_string(),
        ]);
        rings.push(dir);
    }
    let cluster = Cluster::builder()
        .zones(&["a", "b"])
        .replication(1)
        .directory_args(["--config", config.to_str().unwrap()])
        .volume_args_each(volume_args)
        .start()
        .await;
    let client = cluster.client().await;
    let blob = client
        .upload(
            Bytes::from_static(b"private"),
            &UploadOptions {
                collection: "private".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    let status = client.status().await.unwrap();
    let holder = support::server_index(&support::server_of(&status, &blob.blob_id));
    let other = 1 - holder;
    let path = format!("/{}", blob.blob_id);
    let by_k2 = sign(support::access::K2, "k2", &path, now() + 600, None);
    wait_refused(&format!("{}{path}", cluster.http_base(other))).await;
    // The holder drops k2 (a revocation that reached it first).
    write_keyring(&rings[holder], false);
    cluster.signal_volume(holder, libc::SIGHUP);
    let at_holder = format!("{}{path}?{by_k2}", cluster.http_base(holder));
    eventually(
        secs(10),
        "k2 to stop opening the blob",
        async || match get(&at_holder).await.status() {
            StatusCode::FORBIDDEN => Ok(()),
            status => Err(status),
        },
    )
    .await;
    let through = get(&format!("{}{path}?{by_k2}", cluster.http_base(other))).await;
    assert_eq!(through.status(), StatusCode::FORBIDDEN);
    assert!(
        through
            .headers()
            .get(hayloft_volume::proxy::REFUSAL)
            .is_none()
    );
    let lines = support::access::audit_lines(&rings[other].join("audit.log"), |l| {
        l["status"] == "403" && l["subject"] == "key:k2"
    })
    .await;
    let line = lines
        .iter()
        .find(|l| l["status"] == "403" && l["subject"] == "key:k2")
        .unwrap_or_else(|| panic!("no refusal at the non-holder in {lines:#?}"));
    assert_eq!(line["reason"], "unknown_key", "{line}");
    assert_eq!(line["collection"], "private", "{line}");
}

/// In a cluster that requires tokens, the operator page (on a public
/// metrics address here) shows the cluster only to an `admin` token, as a
/// bearer header or a cookie; `/metrics` stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_page_asks_for_the_clusters_credential() {
    let dir = tempfile::tempdir().unwrap();
    let ring = write_keyring(dir.path(), false);
    let (grpc, metrics) = (support::free_port(), support::free_port());
    let log = dir.path().join("directory.log");
    let _directory = support::spawn(
        &[
            "directory".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{grpc}"),
            "--data-dir".into(),
            dir.path().join("directory").display().to_string(),
            "--metrics-listen".into(),
            format!("0.0.0.0:{metrics}"),
            "--keyring".into(),
            ring.display().to_string(),
            "--require-tokens".into(),
        ],
        &log,
    );
    let page = format!("http://127.0.0.1:{metrics}/");
    let http = reqwest::Client::new();
    let unauthenticated = eventually(secs(30), "the operator page to answer", async || {
        http.get(&page)
            .send()
            .await
            .map_err(|e| format!("{e}: {}", std::fs::read_to_string(&log).unwrap()))
    })
    .await;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        unauthenticated.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"hayloft\""
    );
    let body = unauthenticated.text().await.unwrap();
    assert!(!body.contains("id=\"servers\""), "{body}");
    // A forged token, a token without admin: refused too.
    let writer = support::mint_token(&ring, &["write:*"]).0;
    let forged = format!("{}x", &writer[..writer.len() - 1]);
    for (token, status) in [
        (&forged, StatusCode::UNAUTHORIZED),
        (&writer, StatusCode::FORBIDDEN),
    ] {
        let read = http.get(&page).bearer_auth(token).send().await.unwrap();
        assert_eq!(read.status(), status);
        assert!(!read.text().await.unwrap().contains("id=\"servers\""));
    }
    // An admin token, as a header or a cookie: the page.
    let admin = support::mint_token(&ring, &["admin"]).0;
    let by_header = http.get(&page).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(by_header.status(), StatusCode::OK);
    assert_eq!(by_header.headers()[header::CACHE_CONTROL], "no-store");
    assert!(by_header.text().await.unwrap().contains("id=\"servers\""));
    let by_cookie = http
        .get(&page)
        .header(header::COOKIE, format!("hayloft_token={admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), StatusCode::OK);
    // A browser signs in with the page's form: the token goes in the
    // cookie, and back on `/` the page shows; signing out clears it.
    assert!(body.contains("action=\"/login\""), "{body}");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = format!("http://127.0.0.1:{metrics}/login");
    let signed_in = no_redirects
        .post(&login)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers()[header::LOCATION], "/");
    let cookie = signed_in.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let back = http
        .get(&page)
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    assert!(back.text().await.unwrap().contains("id=\"servers\""));
    let bad = no_redirects
        .post(&login)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("token=")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let out = no_redirects
        .post(format!("http://127.0.0.1:{metrics}/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // Counters for Prometheus need no token.
    let scrape = get(&format!("http://127.0.0.1:{metrics}/metrics")).await;
    assert_eq!(scrape.status(), StatusCode::OK);
}

/// A revocation edit with a typo: the server keeps serving with its last
/// good ring (a key removed by hand still verifies), but says so, in its
/// metrics and in `hayloft status`; `hayloft keyring remove` makes the
/// removal an edit that is checked before it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_ring_that_does_not_reload_is_a_problem_until_a_checked_removal() {
    let keys = tempfile::tempdir().unwrap();
    let ring = write_keyring(keys.path(), true);
    let config = keys.path().join("directory.toml");
    std::fs::write(&config, "[collections.private]\naccess = \"signed\"\n").unwrap();
    let cluster = Cluster::builder()
        .zones(&["a"])
        .replication(1)
        .directory_args(["--config", config.to_str().unwrap()])
        .volume_args(["--keyring", ring.to_str().unwrap()])
        .start()
        .await;
    let client = cluster.client().await;
    let blob = client
        .upload(
            Bytes::from_static(b"private"),
            &UploadOptions {
                collection: "private".into(),
                ..UploadOptions::default()
            },
        )
        .await
        .unwrap();
    wait_refused(&blob.url).await;
    let path = format!("/{}", blob.blob_id);
    let by_k2 = format!(
        "{}?{}",
        blob.url,
        sign(support::access::K2, "k2", &path, now() + 600, None)
    );
    assert_eq!(get(&by_k2).await.status(), StatusCode::OK);
    let reload = || cluster.signal_volume(0, libc::SIGHUP);
    let stale = || async {
        let url = format!(
            "http://127.0.0.1:{}/metrics",
            cluster.volume_ports(0).metrics
        );
        let text = get(&url).await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("hayloft_keyring_stale "))
            .map(|v| v.trim().to_owned())
    };
    let problems = || {
        let (ok, out) = support::hayloft(&cluster, &["status"]);
        assert!(ok, "{out}");
        out.lines()
            .filter(|l| l.starts_with("PROBLEM:") && l.contains("key ring"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(stale().await.as_deref(), Some("0"));
    // k2 removed by hand, with a typo: the ring does not load, the server
    // keeps its keys (k2 still opens the blob), and says so.
    let original = std::fs::read_to_string(&ring).unwrap();
    std::fs::write(
        &ring,
        "signing = \"k1\"\n[[keys]]\nid = \"k1\"\nsecret_file = \"k1\n",
    )
    .unwrap();
    reload();
    eventually(secs(15), "word of the stale ring", async || {
        stale().await.as_deref() == Some("1") && !problems().is_empty()
    })
    .await;
    assert!(problems()[0].contains("server vs0"), "{:?}", problems());
    assert_eq!(get(&by_k2).await.status(), StatusCode::OK);

    // `hayloft keyring remove` refuses to edit a ring that does not load,
    // a signing key and an unknown key, leaving the file as it was.
    let remove = |key: &str| {
        std::process::Command::new(support::BIN)
            .args([
                "keyring",
                "remove",
                key,
                "--keyring",
                ring.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let refused = remove("k2");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("fix it first"));
    std::fs::write(&ring, &original).unwrap();
    for (key, says) in [("k1", "signing key"), ("k9", "no key")] {
        let refused = remove(key);
        assert!(!refused.status.success(), "{key}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(std::fs::read_to_string(&ring).unwrap(), original);
    }
    // On the good ring it removes k2: the server reloads, k2 is refused,
    // and the problem is gone.
    let removed = remove("k2");
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(!std::fs::read_to_string(&ring).unwrap().contains("\"k2\""));
    reload();
    eventually(secs(15), "k2 refused and no problem left", async || {
        get(&by_k2).await.status() == StatusCode::FORBIDDEN
            && stale().await.as_deref() == Some("0")
            && problems().is_empty()
    })
    .await;
    let by_k1 = format!("{}?{}", blob.url, sign(K1, "k1", &path, now() + 600, None));
    assert_eq!(get(&by_k1).await.status(), StatusCode::OK);
}

//! The daemon's HTTP surfaces as plain HTTP clients use them: the API's GET health
//! probe, Kubo-style errors and bearer token, and the gateway's files, directories,
//! ranges, trustless formats, caching headers and the always-served empty directory.

use ipfs_accelerate_tests::{Daemon, TestRepo};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let agent = agent();
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = agent.run(builder.body(()).unwrap()).expect("request");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = response.into_body().read_to_vec().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

#[test]
fn gateway_and_api_answer_plain_http() {
    let repo = TestRepo::new();
    let site = repo.path("site");
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::write(site.join("docs/readme.txt"), b"read me\n").unwrap();
    std::fs::write(site.join("page.html"), b"<h1>hi</h1>").unwrap();
    let root = repo.ok(&["add", "-r", "-Q", site.to_str().unwrap()]);
    let daemon = Daemon::start_on(repo, &[]);
    let gw = format!("http://{}", daemon.gateway);

    // The seed's diagnostics: GET on the API's version, GET of the empty directory.
    let version = request("GET", &format!("{}/api/v0/version", daemon.api_url()), &[]);
    assert_eq!(version.status, 200);
    let version: serde_json::Value = serde_json::from_slice(&version.body).unwrap();
    assert!(version["Version"].is_string());
    let empty = request(
        "GET",
        &format!("{gw}/ipfs/QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"),
        &[],
    );
    assert_eq!(empty.status, 200);

    // Kubo-style errors from the API.
    let bad = request(
        "POST",
        &format!("{}/api/v0/cat?arg=not-a-cid", daemon.api_url()),
        &[],
    );
    assert_eq!(bad.status, 400);
    let error: serde_json::Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(error["Type"], "error");
    assert!(error["Message"].as_str().unwrap().contains("invalid CID"));

    // Files by path, with content types and immutable caching.
    let readme = request("GET", &format!("{gw}/ipfs/{root}/docs/readme.txt"), &[]);
    assert_eq!(readme.status, 200);
    assert_eq!(readme.body, b"read me\n");
    assert!(
        readme
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        readme
            .header("cache-control")
            .unwrap()
            .contains("immutable")
    );
    let etag = readme.header("etag").unwrap().to_string();
    let page = request("GET", &format!("{gw}/ipfs/{root}/page.html"), &[]);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );

    // Conditional requests, HEAD and ranges.
    let again = request(
        "GET",
        &format!("{gw}/ipfs/{root}/docs/readme.txt"),
        &[("If-None-Match", &etag)],
    );
    assert_eq!(again.status, 304);
    let head = request("HEAD", &format!("{gw}/ipfs/{root}/docs/readme.txt"), &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("8"));
    let part = request(
        "GET",
        &format!("{gw}/ipfs/{root}/docs/readme.txt"),
        &[("Range", "bytes=5-6")],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, b"me");
    assert_eq!(part.header("content-range"), Some("bytes 5-6/8"));

    // A directory without index.html is listed.
    let listing = request("GET", &format!("{gw}/ipfs/{root}/"), &[]);
    let html = String::from_utf8_lossy(&listing.body);
    assert!(
        html.contains("page.html") && html.contains("docs"),
        "{html}"
    );
    let missing = request("GET", &format!("{gw}/ipfs/{root}/nope.txt"), &[]);
    assert_eq!(missing.status, 404);

    // Trustless formats: a raw block, and a CAR another repo imports.
    let raw = request("GET", &format!("{gw}/ipfs/{root}?format=raw"), &[]);
    assert_eq!(raw.header("content-type"), Some("application/vnd.ipld.raw"));
    let block = daemon.repo.run(&["block", "get", &root]);
    assert_eq!(raw.body, block.stdout);
    let car = request(
        "GET",
        &format!("{gw}/ipfs/{root}"),
        &[("Accept", "application/vnd.ipld.car")],
    );
    assert!(
        car.header("content-type")
            .unwrap()
            .starts_with("application/vnd.ipld.car")
    );
    let other = TestRepo::new();
    let car_path = other.path("site.car");
    std::fs::write(&car_path, &car.body).unwrap();
    let imported = other.ok(&["dag", "import", car_path.to_str().unwrap()]);
    assert_eq!(imported, format!("pinned root {root} success"));
}

/// Starts an `add` upload of `parts` (each `(content type, name)` with 64 KiB of data)
/// that claims more bytes than it sends, as a client that dies mid-upload does.
fn start_cut_off_add(api: &str, parts: &[(&str, &str)]) -> std::net::TcpStream {
    use std::io::Write;
    let boundary = "cut-off-boundary";
    let mut body = Vec::new();
    for (content_type, name) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .unwrap();
        if *content_type != "application/x-directory" {
            body.extend(std::iter::repeat_n(b'x', 64 * 1024));
        }
        body.extend_from_slice(b"\r\n");
    }
    let host = api.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "POST /api/v0/add HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len() + 10_000_000
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    stream.flush().unwrap();
    stream
}

#[test]
fn an_api_token_keeps_other_callers_out_of_the_api_but_not_the_gateway() {
    let repo = TestRepo::new();
    let config = repo.repo_path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("[network]\n"), "{text}");
    let with_token = text.replace("[network]\n", "[network]\napi_token = \"s3cret-token\"\n");
    std::fs::write(&config, with_token).unwrap();
    let daemon = Daemon::start_on(repo, &[]);
    let id = format!("{}/api/v0/id", daemon.api_url());

    for refused in [
        vec![],
        vec![("Authorization", "Bearer s3cret-tokeN")],
        vec![("Authorization", "Basic s3cret-token")],
    ] {
        let reply = request("POST", &id, &refused);
        assert_eq!(reply.status, 401, "{refused:?}");
        let error: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(error["Type"], "error");
        assert!(error["Message"].as_str().unwrap().contains("Bearer"));
    }
    let reply = request("POST", &id, &[("Authorization", "Bearer s3cret-token")]);
    assert_eq!(reply.status, 200);
    // The CLI on the repo sends the token from its config.
    assert_eq!(daemon.repo.ok(&["swarm", "peers"]), "");
    let empty = request(
        "GET",
        &format!(
            "http://{}/ipfs/QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn",
            daemon.gateway
        ),
        &[],
    );
    assert_eq!(empty.status, 200);
}

#[test]
fn cut_off_uploads_pin_nothing() {
    let daemon = Daemon::start(&[]);
    let api = daemon.api_url();
    let file = start_cut_off_add(&api, &[("application/octet-stream", "weights.bin")]);
    let tree = start_cut_off_add(
        &api,
        &[
            ("application/x-directory", "model"),
            ("application/octet-stream", "model%2Fconfig.json"),
            ("application/octet-stream", "model%2Fweights.bin"),
        ],
    );
    // Let the daemon read what was sent, then vanish mid-file.
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop((file, tree));
    let pinned = || {
        !daemon
            .repo
            .ok(&["pin", "ls", "--type", "recursive"])
            .is_empty()
    };
    assert!(
        !ipfs_accelerate_tests::poll_until(std::time::Duration::from_secs(3), pinned),
        "a cut-off upload was imported and pinned"
    );
    // The daemon is fine and still takes whole uploads.
    let whole = daemon.repo.path("whole.txt");
    std::fs::write(&whole, b"whole").unwrap();
    let cid = daemon.repo.add(&whole, &[]);
    assert_eq!(
        daemon.repo.ok(&["pin", "ls", "--type", "recursive"]),
        format!("{cid} recursive")
    );
}

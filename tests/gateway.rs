//! The daemon's HTTP surfaces as plain HTTP clients use them: the API's GET health
//! probe, Kubo-style errors and bearer token, and the gateway's files, directories,
//! ranges, trustless formats, caching headers and the always-served empty directory.
//! Then as attackers use them: web pages and rebinding host names against the API, bad
//! arguments and bodies, DAGs whose sizes lie, clients that never read, and HTML names.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ipfs_accelerate_tests::{Daemon, TestRepo, deterministic_file};

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
    let past_the_end = request(
        "GET",
        &format!("{gw}/ipfs/{root}/docs/readme.txt"),
        &[("Range", "bytes=8-")],
    );
    assert_eq!(past_the_end.status, 416);
    assert_eq!(past_the_end.header("content-range"), Some("bytes */8"));
    // Kubo's default CORS for the gateway: any page may read public content.
    assert_eq!(readme.header("access-control-allow-origin"), Some("*"));

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

/// An answer read off a raw socket, as a client that follows no redirects sees it.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended cleanly with every byte its `Content-Length` promised.
    complete: bool,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts Kubo's error body: `{"Message": .., "Code": 0, "Type": "error"}`.
    fn kubo_error(&self) -> String {
        let error: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not a JSON error body: {}", self.text()));
        assert_eq!(error["Type"], "error", "{error}");
        assert_eq!(error["Code"], 0, "{error}");
        error["Message"].as_str().unwrap().to_string()
    }
}

/// Sends one HTTP/1.0 request (so the answer ends with the connection) and reads it all.
fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawReply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    // The server may answer (and close) before it has read a body it refuses.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let mut bytes = Vec::new();
    let read = stream.read_to_end(&mut bytes);
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Closed before the headers went out: no answer at all.
        assert!(bytes.is_empty(), "a broken answer: {read:?} {bytes:?}");
        return RawReply {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            complete: false,
        };
    };
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = bytes[end + 4..].to_vec();
    let declared = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let complete = read.is_ok() && declared.is_none_or(|n| n == body.len());
    RawReply {
        status,
        headers,
        body,
        complete,
    }
}

/// Sets `key = value` (TOML) in `[section]` of the repo's config.toml.
fn set_config(repo: &TestRepo, section: &str, key: &str, value: &str) {
    let path = repo.repo_path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let header = format!("[{section}]");
    let setting = format!("{key} = {value}");
    let (mut out, mut in_section, mut done) = (Vec::new(), false, false);
    for line in text.lines() {
        if line.starts_with('[') {
            if in_section && !done {
                out.push(setting.clone());
                done = true;
            }
            in_section = line.trim() == header;
        }
        if in_section && line.split('=').next().map(str::trim) == Some(key) {
            out.push(setting.clone());
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !done {
        if !in_section {
            out.push(header);
        }
        out.push(setting);
    }
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn the_api_refuses_web_pages_and_rebinding_hosts() {
    let repo = TestRepo::new();
    set_config(
        &repo,
        "api",
        "allowed_origins",
        r#"["http://app.example:3000"]"#,
    );
    set_config(
        &repo,
        "gateway",
        "cors_allow_origin",
        r#""http://app.example:3000""#,
    );
    let daemon = Daemon::start_on(repo, &[]);
    let api = host_of(&daemon.api_url());
    let id = |headers: &[(&str, &str)]| raw_http(&api, "POST", "/api/v0/id", headers, b"");

    // Programs send no Origin: the CLI, and plain requests naming loopback.
    assert!(!daemon.peer_id().is_empty());
    assert_eq!(id(&[("Host", &api)]).status, 200);
    let localhost = format!("localhost:{}", port_of(&api));
    assert_eq!(id(&[("Host", &localhost)]).status, 200);

    // Pages of other sites, our own gateway's pages, and rebinding host names are not.
    let gateway_page = format!(
        "http://bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354.ipfs.localhost:{}",
        port_of(&daemon.gateway)
    );
    for refused in [
        vec![("Host", api.as_str()), ("Origin", "http://example.com")],
        vec![
            ("Host", api.as_str()),
            ("Referer", "http://example.com/attack.html"),
        ],
        vec![("Host", api.as_str()), ("Origin", gateway_page.as_str())],
        vec![("Host", "evil.example:5001")],
    ] {
        let reply = id(&refused);
        assert_eq!(reply.status, 403, "{refused:?}: {}", reply.text());
        reply.kubo_error();
    }
    let shutdown = raw_http(
        &api,
        "POST",
        "/api/v0/shutdown",
        &[("Host", &api), ("Origin", "http://example.com")],
        b"",
    );
    assert_eq!(shutdown.status, 403);
    assert!(!daemon.peer_id().is_empty(), "the daemon kept running");

    // An allowed origin passes, may read the answer, and has its preflight answered.
    let allowed = id(&[("Host", &api), ("Origin", "http://app.example:3000")]);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://app.example:3000")
    );
    let preflight = raw_http(
        &api,
        "OPTIONS",
        "/api/v0/id",
        &[
            ("Host", &api),
            ("Origin", "http://app.example:3000"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert!(preflight.status < 300, "{preflight:?}");
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );

    // The gateway's CORS header follows gateway.cors_allow_origin.
    let empty = raw_http(
        &daemon.gateway,
        "GET",
        "/ipfs/QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn",
        &[("Host", &daemon.gateway)],
        b"",
    );
    assert_eq!(empty.status, 200);
    assert_eq!(
        empty.header("access-control-allow-origin"),
        Some("http://app.example:3000")
    );
}

/// A multipart body of one file part.
fn one_file_upload(content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "kubo-error-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn bad_arguments_and_bodies_answer_400_in_kubos_shape() {
    let daemon = Daemon::start(&[]);
    let api = host_of(&daemon.api_url());
    let (content_type, upload) = one_file_upload(b"hello");
    for query in [
        "chunker=size-0",
        "chunker=size-99999999999",
        "chunker=rabin",
        "max-file-links=1",
        "max-file-links=-3",
    ] {
        let reply = raw_http(
            &api,
            "POST",
            &format!("/api/v0/add?{query}"),
            &[("Host", &api), ("Content-Type", &content_type)],
            &upload,
        );
        assert_eq!(reply.status, 400, "{query}: {}", reply.text());
        reply.kubo_error();
    }
    let infer = |content_type: &str, body: &[u8]| {
        raw_http(
            &api,
            "POST",
            "/api/v0/accelerate/infer",
            &[("Host", &api), ("Content-Type", content_type)],
            body,
        )
    };
    for (content_type, body) in [
        ("application/json", b"{not json".to_vec()),
        ("application/json", b"{\"texts\": [\"no model\"]}".to_vec()),
        ("text/plain", b"{}".to_vec()),
        ("application/json", vec![b' '; 5 * 1024 * 1024]),
    ] {
        let reply = infer(content_type, &body);
        assert_eq!(
            reply.status,
            400,
            "{content_type} {} bytes: {}",
            body.len(),
            reply.text()
        );
        reply.kubo_error();
    }
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn pb_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn pb_varint(field: u64, n: u64, out: &mut Vec<u8>) {
    varint(field << 3, out);
    varint(n, out);
}

/// A dag-pb UnixFS file node over `links`, declaring `filesize` and `blocksizes`.
fn file_node(links: &[String], blocksizes: &[u64], filesize: u64) -> Vec<u8> {
    let mut unixfs = Vec::new();
    pb_varint(1, 2, &mut unixfs);
    pb_varint(3, filesize, &mut unixfs);
    for size in blocksizes {
        pb_varint(4, *size, &mut unixfs);
    }
    let mut node = Vec::new();
    for (link, size) in links.iter().zip(blocksizes) {
        let mut pb_link = Vec::new();
        let cid = cid::Cid::try_from(link.as_str()).unwrap();
        pb_bytes(1, &cid.to_bytes(), &mut pb_link);
        pb_bytes(2, b"", &mut pb_link);
        pb_varint(3, *size, &mut pb_link);
        pb_bytes(2, &pb_link, &mut node);
    }
    pb_bytes(1, &unixfs, &mut node);
    node
}

fn block_put(repo: &TestRepo, name: &str, data: &[u8], codec: &str) -> String {
    let path = repo.path(name);
    std::fs::write(&path, data).unwrap();
    repo.ok(&["block", "put", "--cid-codec", codec, path.to_str().unwrap()])
}

#[test]
fn a_dag_whose_sizes_lie_never_gets_a_clean_answer() {
    let repo = TestRepo::new();
    let short = [
        block_put(&repo, "a", b"aaaaa", "raw"),
        block_put(&repo, "b", b"bbbbb", "raw"),
    ];
    let long = [
        block_put(&repo, "c", b"cccccccccc", "raw"),
        block_put(&repo, "d", b"dddddddddd", "raw"),
    ];
    // Leaves smaller than declared, larger than declared, and a root at odds with itself.
    let claims_more = block_put(&repo, "r1", &file_node(&short, &[10, 10], 20), "dag-pb");
    let claims_less = block_put(&repo, "r2", &file_node(&long, &[5, 5], 10), "dag-pb");
    let inconsistent = block_put(&repo, "r3", &file_node(&short, &[5, 5], 30), "dag-pb");
    let daemon = Daemon::start_on(repo, &[]);
    let gw = daemon.gateway.clone();
    for (root, range) in [
        (&claims_more, None),
        (&claims_less, None),
        (&claims_less, Some("bytes=0-3")),
        (&inconsistent, None),
    ] {
        let started = Instant::now();
        let mut headers = vec![("Host", gw.as_str())];
        headers.extend(range.map(|r| ("Range", r)));
        let reply = raw_http(&gw, "GET", &format!("/ipfs/{root}"), &headers, b"");
        assert!(
            !(reply.status < 300 && reply.complete),
            "{root} {range:?} answered as if whole: {reply:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "{root} hung");
    }
    let reply = raw_http(
        &gw,
        "GET",
        &format!("/ipfs/{inconsistent}"),
        &[("Host", &gw)],
        b"",
    );
    assert_eq!(reply.status, 502, "{reply:?}");
}

#[test]
fn a_range_fetches_only_the_blocks_it_covers() {
    let repo = TestRepo::new();
    let file = repo.path("weights.bin");
    let size = 1024 * 1024 + 100;
    deterministic_file(&file, size, 5).unwrap();
    let content = std::fs::read(&file).unwrap();
    let root = repo.add(&file, &["--pin=false"]);
    let daemon = Daemon::start_on(repo, &[]);
    let api = host_of(&daemon.api_url());
    let ls = raw_http(
        &api,
        "POST",
        &format!("/api/v0/ls?arg={root}"),
        &[("Host", &api)],
        b"",
    );
    let ls: serde_json::Value = serde_json::from_slice(&ls.body).unwrap();
    let links = ls["Objects"][0]["Links"].as_array().unwrap();
    assert!(links.len() >= 4, "{ls}");
    // The file's first block is gone, and no peer has it: only the tail can be served.
    let first = links[0]["Hash"].as_str().unwrap();
    let removed = raw_http(
        &api,
        "POST",
        &format!("/api/v0/block/rm?arg={first}"),
        &[("Host", &api)],
        b"",
    );
    assert_eq!(removed.status, 200, "{}", removed.text());

    let started = Instant::now();
    let gw = daemon.gateway.clone();
    let tail = raw_http(
        &gw,
        "GET",
        &format!("/ipfs/{root}"),
        &[("Host", &gw), ("Range", "bytes=-100")],
        b"",
    );
    assert_eq!(tail.status, 206, "{}", tail.text());
    assert!(tail.complete);
    assert_eq!(tail.body, &content[content.len() - 100..]);
    assert_eq!(
        tail.header("content-range"),
        Some(format!("bytes {}-{}/{size}", size - 100, size - 1).as_str())
    );
    let middle = raw_http(
        &gw,
        "GET",
        &format!("/ipfs/{root}"),
        &[("Host", &gw), ("Range", "bytes=600000-600009")],
        b"",
    );
    assert_eq!(middle.body, &content[600_000..600_010]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_subdomain_gateway_gives_each_root_its_own_origin() {
    let repo = TestRepo::new();
    let site = repo.path("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("page.html"), b"<h1>hi</h1>").unwrap();
    let hostile = "<img src=x onerror=alert(1)>'\"&.txt";
    std::fs::write(site.join(hostile), b"x").unwrap();
    let root = repo.ok(&["add", "-r", "-Q", site.to_str().unwrap()]);
    let daemon = Daemon::start_on(repo, &[]);
    let gw = daemon.gateway.clone();
    let port = port_of(&gw).to_string();
    let localhost = format!("localhost:{port}");

    // Path requests on localhost move to the root's own origin, path and query kept.
    let moved = raw_http(
        &gw,
        "GET",
        &format!("/ipfs/{root}/page.html?x=1"),
        &[("Host", &localhost)],
        b"",
    );
    assert_eq!(moved.status, 301, "{moved:?}");
    let origin = format!("http://{root}.ipfs.localhost:{port}");
    assert_eq!(
        moved.header("location"),
        Some(format!("{origin}/page.html?x=1").as_str())
    );

    let subdomain = format!("{root}.ipfs.localhost:{port}");
    let page = raw_http(&gw, "GET", "/page.html", &[("Host", &subdomain)], b"");
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.body, b"<h1>hi</h1>");
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );

    // Listings link within the origin and escape names from the DAG.
    for (host, base) in [
        (subdomain.as_str(), String::new()),
        (gw.as_str(), format!("/ipfs/{root}")),
    ] {
        let path = if base.is_empty() {
            "/".to_string()
        } else {
            format!("{base}/")
        };
        let listing = raw_http(&gw, "GET", &path, &[("Host", host)], b"");
        assert_eq!(listing.status, 200, "{listing:?}");
        let html = listing.text();
        assert!(
            html.contains(&format!("href=\"{base}/page.html\"")),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;&#39;&quot;&amp;.txt"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
    }
}

#[test]
fn clients_that_never_read_are_cut_and_others_still_answered() {
    const SILENT: usize = 200;
    let repo = TestRepo::new();
    let timeout = Duration::from_secs(2);
    set_config(&repo, "gateway", "write_timeout_secs", "2");
    set_config(&repo, "gateway", "header_timeout_secs", "2");
    let big = repo.path("big.bin");
    let size = 16 * 1024 * 1024;
    deterministic_file(&big, size, 3).unwrap();
    let cid = repo.add(&big, &[]);
    let small = repo.path("small.txt");
    std::fs::write(&small, b"small").unwrap();
    let small_cid = repo.add(&small, &[]);
    let daemon = Daemon::start_on(repo, &[]);
    let gw = daemon.gateway.clone();
    let api = host_of(&daemon.api_url());

    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| {
            let mut stream = TcpStream::connect(&gw).unwrap();
            write!(stream, "GET /ipfs/{cid} HTTP/1.1\r\nHost: {gw}\r\n\r\n").unwrap();
            stream
        })
        .collect();
    // A connection that never even sends its headers.
    let mute = TcpStream::connect(&gw).unwrap();

    let others = Instant::now();
    let id = raw_http(&api, "POST", "/api/v0/id", &[("Host", &api)], b"");
    assert_eq!(id.status, 200);
    let file = raw_http(
        &gw,
        "GET",
        &format!("/ipfs/{small_cid}"),
        &[("Host", &gw)],
        b"",
    );
    assert_eq!(file.body, b"small");
    assert!(
        others.elapsed() < Duration::from_secs(5),
        "{:?}",
        others.elapsed()
    );

    // Reading would let the server go on, so the test only peeks until every answer has
    // begun (the client's buffer is full from then on), then waits out the timeout.
    let begun = |stream: &TcpStream| {
        stream.set_nonblocking(true).unwrap();
        let peeked = stream.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
        stream.set_nonblocking(false).unwrap();
        peeked
    };
    assert!(
        ipfs_accelerate_tests::poll_until(Duration::from_secs(60), || silent.iter().all(begun)),
        "the server did not start every answer"
    );
    // Every answer's write stalls once the buffers between are full, and is cut a
    // write timeout later. The margin is wide: on a loaded 2-core machine, with 200
    // answers filling their buffers, 3 s once left one connection uncut.
    std::thread::sleep(timeout + Duration::from_secs(10));
    let mut buf = vec![0u8; 1 << 16];
    for (i, mut stream) in silent.into_iter().chain([mute]).enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut received = 0u64;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection {i} is still open after {received} bytes")
                }
                Err(_) => break,
            }
        }
        assert!(
            received < size,
            "connection {i} got the whole file: it was never cut"
        );
    }
}

#[test]
fn the_gateway_streams_a_file_it_fetches_from_a_peer() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let file = a.repo.path("weights.bin");
    deterministic_file(&file, 3 * 1024 * 1024 + 7, 11).unwrap();
    let content = std::fs::read(&file).unwrap();
    let cid = a.repo.add(&file, &[]);
    assert!(
        b.repo
            .ok(&["swarm", "connect", &a.addr()])
            .ends_with("success")
    );
    let gw = b.gateway.clone();
    // A range first (only its blocks come over), then the whole file.
    let tail = raw_http(
        &gw,
        "GET",
        &format!("/ipfs/{cid}"),
        &[("Host", &gw), ("Range", "bytes=-10")],
        b"",
    );
    assert_eq!(tail.status, 206, "{}", tail.text());
    assert_eq!(tail.body, &content[content.len() - 10..]);
    let whole = raw_http(&gw, "GET", &format!("/ipfs/{cid}"), &[("Host", &gw)], b"");
    assert_eq!(whole.status, 200);
    assert!(whole.complete);
    assert!(whole.body == content, "b's gateway sent other bytes");
}

/// One Prometheus sample's value, by its full name.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[test]
fn metrics_count_a_transfer_in_prometheus_text() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let file = a.repo.path("data.bin");
    deterministic_file(&file, 2 * 1024 * 1024 + 1, 3).unwrap();
    let cid = a.repo.add(&file, &[]);
    b.repo.ok(&["swarm", "connect", &a.addr()]);
    let fetched = b.repo.run(&["cat", &cid]);
    assert!(fetched.status.success());

    let scrape = |d: &Daemon| {
        let reply = request(
            "GET",
            &format!("{}/debug/metrics/prometheus", d.api_url()),
            &[],
        );
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .header("content-type")
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        String::from_utf8(reply.body).unwrap()
    };
    let (served, fetcher) = (scrape(&a), scrape(&b));
    let size = 2.0 * 1024.0 * 1024.0 + 1.0;
    // 9 chunks of 256 KiB and the root node.
    assert!(
        sample(&served, "ipfs_accelerate_bitswap_blocks_sent_total") >= 9.0,
        "{served}"
    );
    assert!(
        sample(&served, "ipfs_accelerate_bitswap_sent_bytes_total") >= size,
        "{served}"
    );
    assert!(
        sample(&fetcher, "ipfs_accelerate_bitswap_blocks_received_total") >= 9.0,
        "{fetcher}"
    );
    assert!(
        sample(&fetcher, "ipfs_accelerate_bitswap_received_bytes_total") >= size,
        "{fetcher}"
    );
    assert_eq!(sample(&fetcher, "ipfs_accelerate_bitswap_wantlist"), 0.0);
    assert_eq!(sample(&served, "ipfs_accelerate_peers"), 1.0);
    assert!(
        sample(&fetcher, "ipfs_accelerate_repo_bytes") >= size,
        "{fetcher}"
    );
}

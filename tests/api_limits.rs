//! The API against clients that send slowly, over real sockets to a running daemon: a
//! request body that stops arriving is cut at the idle limit (`api.header_timeout_secs`)
//! with a 408 while other requests are served, and an upload that keeps arriving, however
//! long it takes in all, goes through.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ipfs_accelerate_tests::{Daemon, TestRepo};

/// The idle limit the tests' daemons run with.
const LIMIT: Duration = Duration::from_secs(3);
const BOUNDARY: &str = "slow-client-boundary";

/// A daemon whose API cuts a body that sends nothing for [`LIMIT`].
fn daemon() -> Daemon {
    let repo = TestRepo::new();
    let path = repo.repo_path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let api = text.find("[api]\n").expect("an [api] section");
    let key = "header_timeout_secs = ";
    let at = api + text[api..].find(key).expect("api.header_timeout_secs");
    let end = at + text[at..].find('\n').unwrap();
    let text = format!("{}{key}{}{}", &text[..at], LIMIT.as_secs(), &text[end..]);
    std::fs::write(&path, text).unwrap();
    Daemon::start_on(repo, &[])
}

/// The multipart body of an `add` of one file, as its head, the data, and its tail.
fn add_body(name: &str, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let mut head = head.into_bytes();
    head.extend_from_slice(data);
    (head, format!("\r\n--{BOUNDARY}--\r\n").into_bytes())
}

/// Opens an `add` of `length` body bytes and sends its request head.
fn start_add(api: &str, length: usize) -> TcpStream {
    let host = api.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "POST /api/v0/add?pin=true HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    stream
}

/// Reads an answer until the server closes the connection: the status and the body.
fn read_answer(mut stream: TcpStream, timeout: Duration) -> (u16, String, String) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut bytes = Vec::new();
    let read = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        read.is_ok(),
        "no answer, or no close, in {timeout:?}: {read:?} {text:?}"
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer's head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn pins(daemon: &Daemon) -> String {
    daemon.repo.ok(&["pin", "ls", "--type", "recursive"])
}

#[test]
fn a_stalled_upload_is_cut_at_the_idle_limit_while_others_are_served() {
    let daemon = daemon();
    let api = daemon.api_url();
    let (head, _) = add_body("weights.bin", &vec![b'x'; 256 * 1024]);
    // Claims a megabyte more than it sends, then sends nothing.
    let mut stalled = start_add(&api, head.len() + 1024 * 1024);
    stalled.write_all(&head).unwrap();
    stalled.flush().unwrap();
    let since = Instant::now();

    // Meanwhile the daemon answers other requests.
    let id = ureq::post(format!("{api}/api/v0/id")).send_empty().unwrap();
    assert_eq!(id.status(), 200);
    stalled.set_nonblocking(true).unwrap();
    let waiting = stalled.peek(&mut [0; 1]).map_err(|e| e.kind());
    assert_eq!(
        waiting,
        Err(std::io::ErrorKind::WouldBlock),
        "the stalled upload was answered before the other request ({:?})",
        since.elapsed()
    );
    stalled.set_nonblocking(false).unwrap();

    let (status, head, body) = read_answer(stalled, LIMIT * 4);
    let took = since.elapsed();
    assert_eq!(status, 408, "{head}\n{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.contains("request body"), "{body}");
    assert!(
        took >= LIMIT - Duration::from_millis(500) && took < LIMIT * 2,
        "cut after {took:?}, the limit is {LIMIT:?}"
    );

    // Nothing of it was kept, and the daemon still takes whole uploads.
    assert_eq!(pins(&daemon), "");
    let whole = daemon.repo.path("whole.txt");
    std::fs::write(&whole, b"whole").unwrap();
    let cid = daemon.repo.add(&whole, &[]);
    assert_eq!(pins(&daemon), format!("{cid} recursive"));
}

#[test]
fn a_slow_upload_that_keeps_sending_outlasts_the_idle_limit() {
    let daemon = daemon();
    let api = daemon.api_url();
    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (head, tail) = add_body("slow.bin", &data);
    let mut stream = start_add(&api, head.len() + tail.len());
    // A piece every half limit: the whole takes three limits, no pause is one.
    let pieces = 6;
    let since = Instant::now();
    for piece in head.chunks(head.len().div_ceil(pieces)) {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(LIMIT / 2);
    }
    stream.write_all(&tail).unwrap();
    let mut answer = String::new();
    stream.set_read_timeout(Some(LIMIT * 4)).unwrap();
    // The answer is kept alive: read its head and the body its length names.
    let mut reader = std::io::BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        answer.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(since.elapsed() > LIMIT * 2, "{:?}", since.elapsed());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let added: serde_json::Value = serde_json::from_slice(&body).unwrap();

    let file = daemon.repo.path("slow.bin");
    std::fs::write(&file, &data).unwrap();
    let cid = daemon.repo.add(&file, &[]);
    assert_eq!(added["Hash"], cid.as_str(), "{added}");
}

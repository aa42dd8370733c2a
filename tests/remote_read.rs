//! Reads of a file held by another daemon stream in order within a bounded window
//! (`node/src/unixfs/reader`): a gateway byte range fetches only the blocks that hold
//! it, a whole file nobody reads on stops at the window instead of fetching the DAG,
//! `cat` sends its first bytes before the DAG is here, and the reader's memory does not
//! grow with the file while 1 GiB goes through it. `get` of a directory streams its tar
//! the same way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::time::Duration;

use ipfs_accelerate_tests::{Daemon, deterministic_file, poll_until};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// What the reading daemon may have fetched while its client reads nothing: the read
/// window (32 MiB) and what sockets and the body channel hold, far from the file.
const STALLED_FETCH_LIMIT: u64 = 96 * MIB;
/// The large file of the directory `get` reads: well beyond the window and the stalled
/// fetch limit, small enough for a quick test.
const DIRECTORY_FILE_SIZE: u64 = 128 * MIB;
/// How much the reading daemon's peak RSS may grow over the last 768 MiB of a 1 GiB
/// `cat`, after the first 256 MiB. Its absolute peak, 420 to 660 MB in the debug build
/// here, is mostly memory the allocator keeps for a second after it is freed, and
/// Bitswap's buffers.
const RSS_GROWTH_LIMIT_KIB: u64 = 128 * 1024;

#[test]
fn a_remote_gib_streams_within_a_window_and_a_range_fetches_only_its_blocks() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let file = a.repo.path("big.bin");
    deterministic_file(&file, GIB, 5).unwrap();
    let cid = a.repo.add(&file, &[]);
    let expected = |range: Range<u64>| -> Vec<u8> {
        let mut f = std::fs::File::open(&file).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(range.start)).unwrap();
        let mut out = vec![0; (range.end - range.start) as usize];
        f.read_exact(&mut out).unwrap();
        out
    };
    let tail = expected(GIB - MIB..GIB);
    assert!(
        b.repo
            .ok(&["swarm", "connect", &a.addr()])
            .ends_with("success")
    );
    let total_blocks = blocks_under(&a, &cid, 0, &(0..GIB));

    // The last MiB: the root, the nodes above the tail, the tail's leaves.
    let range_blocks = blocks_under(&a, &cid, 0, &(GIB - MIB..GIB));
    assert!(range_blocks < total_blocks / 100, "{range_blocks} blocks");
    let (status, mut body) = get(
        &b.gateway,
        &format!("GET /ipfs/{cid} HTTP/1.0\r\nRange: bytes=-{MIB}\r\n"),
    );
    assert_eq!(status, 206);
    let mut got = Vec::new();
    body.read_to_end(&mut got).unwrap();
    assert!(got == tail, "the range carried other bytes");
    let (blocks, bytes) = received(&b);
    assert_eq!(blocks, range_blocks, "blocks fetched for the last MiB");
    assert!(bytes < 2 * MIB, "{bytes} bytes fetched for the last MiB");
    eprintln!(
        "range: {blocks} of {total_blocks} blocks, {bytes} bytes; b's peak RSS {} KiB",
        peak_rss_kib(&b)
    );

    // The whole file through the gateway, read for 1 MiB and then not at all: the
    // fetch runs ahead by the window, then waits.
    let (status, mut body) = get(&b.gateway, &format!("GET /ipfs/{cid} HTTP/1.0\r\n"));
    assert_eq!(status, 200);
    let mut first = vec![0; MIB as usize];
    body.read_exact(&mut first).unwrap();
    assert!(first == expected(0..MIB), "the file's first MiB");
    let mut last = (0, 0);
    let settled = poll_until(Duration::from_secs(60), || {
        let now = received(&b);
        let idle = b.repo.ok(&["bitswap", "wantlist"]).is_empty() && now == last;
        last = now;
        idle
    });
    let (blocks, bytes) = received(&b);
    assert!(
        settled,
        "b kept fetching for a client that reads nothing: {bytes} bytes"
    );
    assert!(
        bytes < STALLED_FETCH_LIMIT,
        "b fetched {bytes} bytes ({blocks} of {total_blocks} blocks) for a client that read 1 MiB"
    );
    eprintln!(
        "stalled gateway read: {blocks} of {total_blocks} blocks, {bytes} bytes; b's peak RSS {} KiB",
        peak_rss_kib(&b)
    );
    drop(body);

    // cat through the API: the first bytes come before the DAG is here, then every byte.
    let api = b.api_url();
    let api = api.trim_start_matches("http://");
    let (status, mut body) = get(
        api,
        &format!("POST /api/v0/cat?arg={cid} HTTP/1.0\r\nContent-Length: 0\r\n"),
    );
    assert_eq!(status, 200);
    let mut chunk = vec![0; 64 * 1024];
    body.read_exact(&mut chunk).unwrap();
    let (blocks_at_first_bytes, _) = received(&b);
    assert!(
        blocks_at_first_bytes < total_blocks / 2,
        "cat sent its first bytes after {blocks_at_first_bytes} of {total_blocks} blocks came"
    );
    let mut want = BufReader::new(std::fs::File::open(&file).unwrap());
    let mut want_chunk = vec![0; chunk.len()];
    want.read_exact(&mut want_chunk).unwrap();
    assert!(chunk == want_chunk, "cat's first bytes");
    let mut read = chunk.len() as u64;
    let mut peak_at_quarter = 0;
    loop {
        let n = body.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        want.read_exact(&mut want_chunk[..n]).unwrap();
        assert!(chunk[..n] == want_chunk[..n], "cat's bytes at {read}");
        let before = read;
        read += n as u64;
        if before < GIB / 4 && read >= GIB / 4 {
            peak_at_quarter = peak_rss_kib(&b);
        }
    }
    assert_eq!(read, GIB);
    let (blocks, _) = received(&b);
    assert_eq!(blocks, total_blocks, "every block came once");

    // Memory stays bounded: the last three quarters of the file add little to the
    // peak the first quarter reached (a reader holding what it read would add 768 MiB).
    let peak = peak_rss_kib(&b);
    eprintln!(
        "cat: first bytes after {blocks_at_first_bytes} blocks; b's peak RSS {peak_at_quarter} \
         KiB after 256 MiB, {peak} KiB after 1 GiB"
    );
    assert!(
        peak < peak_at_quarter + RSS_GROWTH_LIMIT_KIB,
        "b's peak RSS grew from {peak_at_quarter} KiB to {peak} KiB over the last 768 MiB"
    );
}

#[test]
fn a_remote_directory_streams_through_get_as_its_blocks_arrive() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let c = Daemon::start(&[]);
    let dir = a.repo.path("tree");
    std::fs::create_dir_all(dir.join("c-sub")).unwrap();
    std::fs::write(dir.join("a-notes.txt"), b"the big file follows\n").unwrap();
    deterministic_file(&dir.join("b-big.bin"), DIRECTORY_FILE_SIZE, 7).unwrap();
    deterministic_file(&dir.join("c-sub/d.bin"), MIB + 17, 8).unwrap();
    std::fs::write(dir.join("c-sub/e.txt"), b"last\n").unwrap();
    let cid = a.repo.add(&dir, &["-r"]);
    for d in [&b, &c] {
        assert!(
            d.repo
                .ok(&["swarm", "connect", &a.addr()])
                .ends_with("success")
        );
    }
    let get_tar = |d: &Daemon| {
        let api = d.api_url();
        let api = api.trim_start_matches("http://").to_string();
        let head = format!("POST /api/v0/get?arg={cid} HTTP/1.0\r\nContent-Length: 0\r\n");
        let (status, body) = get(&api, &head);
        assert_eq!(status, 200);
        body
    };

    // b streams the tar: its first bytes come before half the blocks are here, then
    // every byte is the one a writes from its own store.
    let mut remote = get_tar(&b);
    let mut chunk = vec![0; 64 * 1024];
    remote.read_exact(&mut chunk).unwrap();
    let (blocks_at_first_bytes, _) = received(&b);
    let mut local = get_tar(&a);
    let mut want = vec![0; chunk.len()];
    local.read_exact(&mut want).unwrap();
    assert!(chunk == want, "the archive's first bytes");
    let mut read = chunk.len() as u64;
    loop {
        let n = remote.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        local.read_exact(&mut want[..n]).unwrap();
        assert!(chunk[..n] == want[..n], "the archive's bytes at {read}");
        read += n as u64;
    }
    assert_eq!(
        local.read(&mut want).unwrap(),
        0,
        "b's archive ends where a's does"
    );
    assert!(read > DIRECTORY_FILE_SIZE, "{read} bytes");
    let (total_blocks, _) = received(&b);
    assert!(
        blocks_at_first_bytes < total_blocks / 2,
        "get sent its first bytes after {blocks_at_first_bytes} of {total_blocks} blocks came"
    );
    eprintln!("get: first bytes after {blocks_at_first_bytes} of {total_blocks} blocks");

    // c's client reads 1 MiB and then nothing: the fetch stops at the window.
    let mut stalled = get_tar(&c);
    stalled.read_exact(&mut vec![0; MIB as usize]).unwrap();
    let mut last = (0, 0);
    let settled = poll_until(Duration::from_secs(60), || {
        let now = received(&c);
        let idle = c.repo.ok(&["bitswap", "wantlist"]).is_empty() && now == last;
        last = now;
        idle
    });
    let (blocks, bytes) = received(&c);
    assert!(settled, "c kept fetching for a client that reads nothing");
    assert!(
        bytes < STALLED_FETCH_LIMIT,
        "c fetched {bytes} bytes ({blocks} of {total_blocks} blocks) for a client that read 1 MiB"
    );
}

/// Blocks of the file DAG under `cid` (placed at `offset`) that hold bytes of `range`,
/// with the nodes above them, from `ls` on the daemon that has it.
fn blocks_under(d: &Daemon, cid: &str, offset: u64, range: &Range<u64>) -> u64 {
    const RAW: u64 = 0x55;
    if cid::Cid::try_from(cid).unwrap().codec() == RAW {
        return 1;
    }
    let mut count = 1;
    let mut start = offset;
    for line in d.repo.ok(&["ls", cid]).lines() {
        let mut parts = line.split(' ');
        let child = parts.next().unwrap().to_string();
        let size: u64 = parts.next().unwrap().parse().unwrap();
        let end = start + size;
        if start < range.end && end > range.start {
            count += blocks_under(d, &child, start, range);
        }
        start = end;
    }
    count
}

/// Blocks and bytes the daemon received over Bitswap.
fn received(d: &Daemon) -> (u64, u64) {
    let stat: serde_json::Value =
        serde_json::from_str(&d.repo.ok(&["bitswap", "stat", "--json"])).unwrap();
    (
        stat["BlocksReceived"].as_u64().unwrap(),
        stat["DataReceived"].as_u64().unwrap(),
    )
}

/// Sends `head` (request line and headers, each ending in CRLF) to `addr`; returns the
/// status and the body as it arrives (HTTP/1.0: the body ends when the server closes).
fn get(addr: &str, head: &str) -> (u16, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
        .write_all(format!("{head}Host: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            return (status, reader);
        }
    }
}

/// The daemon's peak RSS (VmHWM), found by its repo among this user's processes.
fn peak_rss_kib(d: &Daemon) -> u64 {
    let repo = format!("IPFS_ACCELERATE_PATH={}", d.repo.repo_path().display());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let is_daemon = cmdline.split(|&b| b == 0).any(|arg| arg == b"daemon");
        if is_daemon && environ.split(|&b| b == 0).any(|v| v == repo.as_bytes()) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no daemon process for {repo}");
}

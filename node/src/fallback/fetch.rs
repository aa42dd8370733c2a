//! One request to one trustless gateway for one block: `GET {base}/ipfs/{cid}?format=raw`
//! with `Accept: application/vnd.ipld.raw`. The whole exchange (connecting, headers,
//! body) runs within the timeout, so a gateway that stalls anywhere is cut; the body is
//! read to at most the block limit and hashed against the CID before anyone sees it.
//! Blocking: callers run it on tokio's blocking threads.

use std::time::Duration;

use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::limits::BLOCK_SIZE_LIMIT;

/// The trustless gateway's raw block type.
const RAW_BLOCK: &str = "application/vnd.ipld.raw";
/// Redirects followed: a gateway may send path requests to its subdomain host.
const REDIRECTS: u32 = 3;

/// Why a gateway gave no block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// No answer within the timeout, a connection or HTTP error, or a status other
    /// than 200: the gateway may have the block another time.
    Unavailable(String),
    /// An answer that is not the block: bytes that do not hash to the CID, or more
    /// than a block may hold.
    WrongBlock(String),
}

/// An HTTP client for gateways: one connection pool, every request within `timeout`.
#[derive(Debug, Clone)]
pub(super) struct Client {
    agent: ureq::Agent,
    timeout: Duration,
}

impl Client {
    /// `parallel` is how many requests may run at once (idle connections kept per host).
    pub(super) fn new(timeout: Duration, parallel: usize) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(REDIRECTS)
            .max_idle_connections_per_host(parallel)
            .user_agent(concat!("ipfs-accelerate/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { agent, timeout }
    }

    /// Block `cid` from the gateway at `base` (`http[s]://host[:port][/prefix]`, no
    /// trailing slash), verified.
    pub(super) fn block(&self, base: &str, cid: &Cid) -> Result<Block, Failure> {
        let url = format!("{base}/ipfs/{cid}?format=raw");
        let unavailable = |error: ureq::Error| match error {
            ureq::Error::Timeout(_) => {
                Failure::Unavailable(format!("no answer within {:?}", self.timeout))
            }
            other => Failure::Unavailable(other.to_string()),
        };
        let mut response = (self.agent.get(&url))
            .header("Accept", RAW_BLOCK)
            .call()
            .map_err(unavailable)?;
        let status = response.status();
        if status != 200 {
            return Err(Failure::Unavailable(format!("answered HTTP {status}")));
        }
        // One byte past the limit is read to tell a block at the limit from more.
        let data = (response.body_mut().with_config())
            .limit(BLOCK_SIZE_LIMIT as u64)
            .read_to_vec()
            .map_err(|error| match error {
                ureq::Error::BodyExceedsLimit(_) => Failure::WrongBlock(format!(
                    "answered more than a block may hold ({BLOCK_SIZE_LIMIT} bytes)"
                )),
                other => unavailable(other),
            })?;
        Block::verified(*cid, data)
            .map_err(|_| Failure::WrongBlock("sent bytes that are not the block".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Instant;

    use super::super::test_server::{block, reply, serve};
    use super::*;

    #[test]
    fn a_block_is_asked_for_as_raw_and_verified() {
        let wanted = block(b"the block");
        let data = wanted.data().to_vec();
        let (base, requests) = serve(move |_, stream| reply(stream, "200 OK", &data));
        let client = Client::new(Duration::from_secs(5), 1);
        assert_eq!(client.block(&base, wanted.cid()), Ok(wanted.clone()));
        let line = requests.recv().unwrap();
        assert_eq!(
            line,
            format!("GET /ipfs/{}?format=raw HTTP/1.1", wanted.cid())
        );
    }

    #[test]
    fn wrong_bytes_and_oversized_answers_are_wrong_blocks() {
        let wanted = block(b"the block");
        let (base, _requests) = serve(|line, stream| {
            if line.contains("big") {
                reply(stream, "200 OK", &vec![7; BLOCK_SIZE_LIMIT + 1]);
            } else {
                reply(stream, "200 OK", b"other bytes");
            }
        });
        let client = Client::new(Duration::from_secs(5), 1);
        assert!(matches!(
            client.block(&base, wanted.cid()),
            Err(Failure::WrongBlock(_))
        ));
        let Err(Failure::WrongBlock(why)) = client.block(&format!("{base}/big"), wanted.cid())
        else {
            panic!("an oversized answer was taken");
        };
        assert!(why.contains("more than a block"), "{why}");
    }

    #[test]
    fn other_statuses_are_unavailable() {
        let wanted = block(b"the block");
        let (base, _requests) = serve(|_, stream| reply(stream, "404 Not Found", b"nope"));
        let client = Client::new(Duration::from_secs(5), 1);
        assert_eq!(
            client.block(&base, wanted.cid()),
            Err(Failure::Unavailable("answered HTTP 404 Not Found".into()))
        );
    }

    #[test]
    fn a_gateway_that_stalls_in_the_body_is_cut_by_the_timeout() {
        let wanted = block(b"the block");
        let (release, held) = mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let (base, _requests) = serve(move |_, stream| {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nten bytes.";
            let _ = stream.write_all(head.as_bytes());
            // Hold the connection open until the test ends.
            let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(30));
        });
        let client = Client::new(Duration::from_millis(500), 1);
        let started = Instant::now();
        let result = client.block(&base, wanted.cid());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            result,
            Err(Failure::Unavailable("no answer within 500ms".into()))
        );
        drop(release);
    }

    #[test]
    fn a_refused_connection_is_unavailable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(Duration::from_secs(5), 1);
        let result = client.block(&format!("http://127.0.0.1:{port}"), block(b"x").cid());
        assert!(matches!(result, Err(Failure::Unavailable(_))), "{result:?}");
    }
}

//! Fallback HTTP gateways as a block source: when no peer delivers a wanted block
//! within `network.gateways_delay_ms`, Bitswap also asks the trustless gateways in
//! `network.gateways` ([`crate::bitswap`] decides when; this module asks).
//!
//! A gateway is untrusted: every answer is read to at most one block's bytes within
//! the timeout and hashed against its CID before it is used or stored, and a gateway
//! that sends wrong bytes is skipped for a while ([`ranking`]). A fetch asks the
//! gateways one after another, best first (measured success and latency); when all
//! failed it tries them all again after a backoff that doubles, `gateways_retries`
//! times. HTTP runs on tokio's blocking threads ([`fetch`]).

mod fetch;
mod ranking;
#[cfg(test)]
mod test_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Uri;
use cid::Cid;
use ipfs_accelerate_protocol::Block;

use crate::config::NetworkConfig;
use fetch::Failure;
use ranking::Ranking;

/// Default for `network.gateways_delay_ms`: how long peers have to deliver a block
/// before the gateways are asked too.
pub const DEFAULT_DELAY: Duration = Duration::from_secs(2);
/// Default for `network.gateways_timeout_secs`: one request, connection to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default for `network.gateways_retries`: rounds over every gateway after the first.
pub const DEFAULT_RETRIES: u32 = 2;
/// The most retry rounds a configuration may ask for.
pub const RETRIES_LIMIT: u32 = 10;
/// Blocks fetched from gateways at once, over all wants (Bitswap keeps to it).
pub const FETCHES_AT_ONCE: usize = 16;

/// The gateways and how to ask them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URLs, `http://` or `https://`, without `/ipfs/`.
    pub urls: Vec<String>,
    /// Peers have this long to deliver a block before the gateways are asked.
    pub delay: Duration,
    /// One request's limit, from connecting to the body's last byte.
    pub timeout: Duration,
    /// Rounds over every gateway after the first, each after a doubling backoff.
    pub retries: u32,
}

impl Config {
    /// The `[network]` settings.
    pub fn from_network(network: &NetworkConfig) -> Config {
        Config {
            urls: network.gateways.clone(),
            delay: Duration::from_millis(network.gateways_delay_ms),
            timeout: Duration::from_secs(network.gateways_timeout_secs.max(1)),
            retries: network.gateways_retries.min(RETRIES_LIMIT),
        }
    }
}

/// A configured gateway that is not a base URL this client can ask.
#[derive(Debug, thiserror::Error)]
#[error("gateway {url:?} is not usable: {reason}")]
pub struct BadUrl {
    pub url: String,
    pub reason: String,
}

/// Why the gateways gave no block.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every request failed; `last` says how the last one did.
    #[error("{tries} gateway requests failed, the last: {last}")]
    Failed { tries: u32, last: String },
    /// Every gateway is skipped for having sent a wrong block lately.
    #[error("every gateway is skipped for having sent a wrong block")]
    AllSkipped,
    /// Nobody wants the block any more (a peer delivered it first).
    #[error("the block is no longer wanted")]
    NotWanted,
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the gateways delivered and refused since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Verified blocks, and their bytes.
    pub blocks: u64,
    pub bytes: u64,
    /// Requests that brought no block: errors, timeouts, other statuses.
    pub failed_requests: u64,
    /// Answers that were not the block asked for (each skips its gateway a while).
    pub wrong_blocks: u64,
}

/// Handle to the configured gateways; cheap to clone.
#[derive(Clone)]
pub struct Gateways {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    delay: Duration,
    retries: u32,
    client: fetch::Client,
    ranking: Mutex<Ranking>,
    blocks: AtomicU64,
    bytes: AtomicU64,
    failed_requests: AtomicU64,
    wrong_blocks: AtomicU64,
}

impl std::fmt::Debug for Gateways {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateways")
            .field("urls", &self.inner.urls)
            .finish()
    }
}

impl Gateways {
    /// The gateways of `config`, or `None` when it lists none. Fails on the first URL
    /// that is not `http://` or `https://` with a host.
    pub fn new(config: Config) -> Result<Option<Gateways>, BadUrl> {
        if config.urls.is_empty() {
            return Ok(None);
        }
        let urls = (config.urls.iter())
            .map(|url| base_url(url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Gateways {
            inner: Arc::new(Inner {
                ranking: Mutex::new(Ranking::new(urls.len())),
                urls,
                delay: config.delay,
                retries: config.retries,
                client: fetch::Client::new(config.timeout, FETCHES_AT_ONCE),
                blocks: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                failed_requests: AtomicU64::new(0),
                wrong_blocks: AtomicU64::new(0),
            }),
        }))
    }

    /// How long peers have to deliver a block before the gateways are asked.
    pub fn delay(&self) -> Duration {
        self.inner.delay
    }

    pub fn stats(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            blocks: get(&self.inner.blocks),
            bytes: get(&self.inner.bytes),
            failed_requests: get(&self.inner.failed_requests),
            wrong_blocks: get(&self.inner.wrong_blocks),
        }
    }

    /// Block `cid`, verified, from the first gateway that has it: the gateways best
    /// first, then again after each backoff while retries are left. Stops early once
    /// `still_wanted` says no one waits for the block.
    pub async fn fetch(&self, cid: Cid, still_wanted: impl Fn() -> bool) -> Result<Block> {
        let inner = &self.inner;
        let (mut tries, mut last) = (0u32, None);
        for round in 0..=inner.retries {
            if round > 0 {
                tokio::time::sleep(ranking::retry_backoff(round)).await;
            }
            let order = self.ranking().order(Instant::now());
            for gateway in order {
                if !still_wanted() {
                    return Err(Error::NotWanted);
                }
                tries += 1;
                let url = &inner.urls[gateway];
                let asked = Instant::now();
                let (client, base) = (inner.client.clone(), url.clone());
                let answer = tokio::task::spawn_blocking(move || client.block(&base, &cid))
                    .await
                    .unwrap_or_else(|e| Err(Failure::Unavailable(e.to_string())));
                match answer {
                    Ok(block) => {
                        self.ranking().succeeded(gateway, asked.elapsed());
                        inner.blocks.fetch_add(1, Ordering::Relaxed);
                        (inner.bytes).fetch_add(block.len() as u64, Ordering::Relaxed);
                        tracing::debug!(%cid, gateway = %url, "gateway: block fetched");
                        return Ok(block);
                    }
                    Err(Failure::Unavailable(why)) => {
                        self.ranking().failed(gateway);
                        inner.failed_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%cid, gateway = %url, why, "gateway: no block");
                        last = Some(format!("{url}: {why}"));
                    }
                    Err(Failure::WrongBlock(why)) => {
                        self.ranking().sent_wrong_block(gateway, Instant::now());
                        inner.wrong_blocks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            %cid, gateway = %url, why,
                            "gateway: wrong block refused; the gateway is skipped for {:?}",
                            ranking::WRONG_BLOCK_SKIP
                        );
                        last = Some(format!("{url}: {why}"));
                    }
                }
            }
        }
        Err(match last {
            Some(last) => Error::Failed { tries, last },
            None => Error::AllSkipped,
        })
    }

    fn ranking(&self) -> std::sync::MutexGuard<'_, Ranking> {
        (self.inner.ranking.lock()).unwrap_or_else(|e| e.into_inner())
    }
}

/// `url` checked (`http://` or `https://`, a host, no query) and without a trailing
/// slash, so `/ipfs/{cid}` can follow it.
fn base_url(url: &str) -> Result<String, BadUrl> {
    let bad = |reason: &str| BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("only http:// and https:// gateways are supported"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a gateway's base URL takes no query"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::test_server::{block, reply, serve};
    use super::*;

    fn gateways(urls: &[&str], retries: u32) -> Gateways {
        Gateways::new(Config {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            delay: Duration::ZERO,
            timeout: Duration::from_millis(500),
            retries,
        })
        .unwrap()
        .unwrap()
    }

    /// A gateway with every block of `blocks`.
    fn good(blocks: Vec<Block>) -> (String, mpsc::Receiver<String>) {
        serve(move |line, stream| {
            match blocks.iter().find(|b| line.contains(&b.cid().to_string())) {
                Some(b) => reply(stream, "200 OK", b.data()),
                None => reply(stream, "404 Not Found", b""),
            }
        })
    }

    #[tokio::test]
    async fn a_gateway_that_sends_a_wrong_block_is_passed_over_and_then_skipped() {
        let (one, two) = (block(b"one"), block(b"two"));
        let (hostile, hostile_requests) =
            serve(|_, stream| reply(stream, "200 OK", b"not the block"));
        let (honest, honest_requests) = good(vec![one.clone(), two.clone()]);
        let gateways = gateways(&[&hostile, &honest], 0);
        assert_eq!(gateways.fetch(*one.cid(), || true).await.unwrap(), one);
        assert_eq!(hostile_requests.try_iter().count(), 1);
        assert_eq!(honest_requests.try_iter().count(), 1);
        // The next block is not asked of the hostile one.
        assert_eq!(gateways.fetch(*two.cid(), || true).await.unwrap(), two);
        assert_eq!(hostile_requests.try_iter().count(), 0);
        let stats = gateways.stats();
        assert_eq!((stats.blocks, stats.wrong_blocks), (2, 1));
        assert_eq!(stats.bytes, 6);
    }

    #[tokio::test]
    async fn a_stalled_gateway_is_retried_after_a_backoff_and_then_given_up() {
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let (stalled, requests) = serve(move |_, _| {
            let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(30));
        });
        let gateways = gateways(&[&stalled], 2);
        let started = Instant::now();
        let result = gateways.fetch(*block(b"x").cid(), || true).await;
        let took = started.elapsed();
        let Err(Error::Failed { tries, last }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(tries, 3);
        assert!(last.contains("no answer within 500ms"), "{last}");
        assert_eq!(requests.try_iter().count(), 3);
        // Three timeouts and two backoffs, and not much more.
        let least = Duration::from_millis(3 * 500) + ranking::retry_backoff(1) * 3;
        assert!(
            took >= least && took < least + Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(gateways.stats().failed_requests, 3);
        drop(release);
    }

    #[tokio::test]
    async fn a_fetch_nobody_waits_for_asks_nobody() {
        let (honest, requests) = good(vec![block(b"one")]);
        let gateways = gateways(&[&honest], 2);
        let result = gateways.fetch(*block(b"one").cid(), || false).await;
        assert!(matches!(result, Err(Error::NotWanted)), "{result:?}");
        assert_eq!(requests.try_iter().count(), 0);
    }

    #[test]
    fn base_urls_are_http_or_https_with_a_host() {
        assert_eq!(
            base_url("https://gw.example/").unwrap(),
            "https://gw.example"
        );
        assert_eq!(
            base_url("http://127.0.0.1:8080/prefix").unwrap(),
            "http://127.0.0.1:8080/prefix"
        );
        for bad in [
            "ftp://gw.example",
            "gw.example",
            "/ipfs",
            "http://",
            "https://gw.example/?x=1",
            "",
        ] {
            assert!(base_url(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn no_urls_is_no_gateways() {
        let config = Config::from_network(&NetworkConfig::default());
        assert!(Gateways::new(config).unwrap().is_none());
    }

    #[test]
    fn the_network_settings_are_bounded() {
        let network = NetworkConfig {
            gateways: vec!["http://127.0.0.1:1".into()],
            gateways_timeout_secs: 0,
            gateways_retries: 1000,
            ..NetworkConfig::default()
        };
        let config = Config::from_network(&network);
        assert_eq!(config.timeout, Duration::from_secs(1));
        assert_eq!(config.retries, RETRIES_LIMIT);
        assert_eq!(config.delay, DEFAULT_DELAY);
    }
}
